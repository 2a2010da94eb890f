//! Random capture filter expressions and packets, for the differential tests against libpcap
//! (`tests/capture.rs`).

/// Whether tcpdump, the oracle, is installed; under `CI=true` its absence fails `test`
/// (`scripts/test.sh` installs Debian's package).
pub fn tcpdump_available(test: &str) -> bool {
    if std::process::Command::new("tcpdump").arg("--version").output().is_ok() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "{test}: tcpdump is required (scripts/test.sh installs it)");
    eprintln!("SKIPPED {test}: no tcpdump (apt-get install tcpdump)");
    false
}

/// xorshift64*: enough for generating text, replayable from the seed.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// One of `items`.
    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// Addresses the expressions and the packets share.
pub const ADDRS: &[&str] =
    &["10.0.0.1", "192.168.1.20", "::1", "2001:db8::5", "::ffff:10.0.0.1", "10.1", "10", "10.1.2"];
/// Networks.
pub const NETS: &[&str] =
    &["10.0.0.0/8", "10.1", "192.168", "2001:db8::/32", "10.1.2.3/16", "10.1.0.0 mask 255.255.0.0"];
/// Ports, in libpcap's number syntaxes.
pub const PORTS: &[&str] = &["22", "80", "443", "0x50", "010", "65535", "70000"];
/// MAC addresses, in both notations.
pub const MACS: &[&str] = &["00:11:22:33:44:55", "0:1b:21:a:b:c", "00-11-22-33-44-55"];
/// Primitives without addresses, and relations.
pub const SIMPLE: &[&str] = &[
    "ip",
    "ip6",
    "arp",
    "rarp",
    "tcp",
    "udp",
    "icmp",
    "icmp6",
    "sctp",
    "vlan",
    "vlan 10",
    "less 100",
    "greater 64",
    "proto 17",
    "ip proto \\tcp",
    "ip6 proto 6",
    "ether proto \\ip",
    "ether proto 0x86dd",
    "ip proto tcp",
    "ip[6:2] & 0x1fff = 0",
    "tcp[tcpflags] & (tcp-syn|tcp-ack) != 0",
    "len >= 60",
    "icmp[icmptype] = icmp-echo",
    "ip[0] & 0xf > 5",
    "ether[12:2] = 0x800",
    "ip[0:3] = 1",
    "udp[8:2] != 0",
    "icmp6[0] = 128",
    "ip[100] = 1",
    "tcp[13] = 2",
    "udp[0:2] = 53",
    "ip6[6] = 44",
    "ether[0] & 1 = 0",
    "len - 60 < 10",
    "ip[2:2] / (ip[1] & 0x10) > 2",
    "ip[2:2] / ip[0] > 2",
    "ip[2:2] % 3 = 1",
    "ip[0] << ip[1] = 0",
    "ip[8] >> 33 = 0",
    "(-ip[0]) > 100",
    "ip[0] > -100",
    "ip[6:2] * 3 + 1 > ip[2:2] ^ 0xff | 4",
];

/// A random primitive (sometimes a bare ID, which repeats the qualifiers before it).
pub fn primitive(r: &mut Rng) -> String {
    let dir = r.pick(&["", "", "src ", "dst ", "src or dst ", "src and dst "]);
    match r.below(8) {
        0 => format!("{}{dir}host {}", r.pick(&["", "", "ip ", "ip6 ", "arp "]), r.pick(ADDRS)),
        1 => format!("{}{dir}net {}", r.pick(&["", "", "ip ", "ip6 "]), r.pick(NETS)),
        2 => format!("{}{dir}port {}", r.pick(&["", "tcp ", "udp ", "sctp ", "ip "]), r.pick(PORTS)),
        3 => format!("{}{dir}portrange {}-{}", r.pick(&["", "tcp ", "udp "]), r.pick(PORTS), r.pick(PORTS)),
        4 => format!("ether {dir}host {}", r.pick(MACS)),
        5 => format!("{dir}{}", r.pick(ADDRS)),
        // A bare ID: repeats the previous qualifiers (or is an error at the start).
        6 => r.pick(&[ADDRS, PORTS].concat()).to_owned(),
        _ => r.pick(SIMPLE).to_owned(),
    }
}

/// A random expression of up to four terms, nested up to three deep.
pub fn expression(r: &mut Rng, depth: usize) -> String {
    let mut out = String::new();
    let terms = 1 + r.below(4);
    for i in 0..terms {
        if i > 0 {
            out.push_str(r.pick(&[" and ", " or ", " && ", " || "]));
        }
        if r.below(4) == 0 {
            out.push_str(r.pick(&["not ", "! "]));
        }
        if depth < 3 && r.below(4) == 0 {
            out.push('(');
            out.push_str(&expression(r, depth + 1));
            out.push(')');
        } else {
            out.push_str(&primitive(r));
        }
    }
    out
}

/// Breaks an expression now and then: a token dropped, doubled or a stray one inserted.
pub fn maybe_broken(r: &mut Rng, text: String) -> String {
    if r.below(5) != 0 {
        return text;
    }
    let mut words: Vec<String> = text.split(' ').map(str::to_owned).collect();
    let at = r.below(words.len());
    match r.below(3) {
        0 => {
            words.remove(at);
        }
        1 => words.insert(at, words[at].clone()),
        _ => words.insert(at, r.pick(&["and", "or", "not", "(", ")", "host", "port", "42"]).to_owned()),
    }
    words.join(" ")
}

/// An empty Ethernet capture file, so tcpdump compiles for `DLT_EN10MB` without an interface.
pub fn empty_pcap(dir: &std::path::Path) -> std::path::PathBuf {
    let mut header = Vec::new();
    header.extend_from_slice(&0xa1b2_c3d4_u32.to_le_bytes());
    header.extend_from_slice(&2_u16.to_le_bytes());
    header.extend_from_slice(&4_u16.to_le_bytes());
    header.extend_from_slice(&[0; 8]);
    header.extend_from_slice(&262_144_u32.to_le_bytes());
    header.extend_from_slice(&1_u32.to_le_bytes());
    let path = dir.join("empty.pcap");
    std::fs::write(&path, header).expect("write the capture file");
    path
}

/// IPv4 addresses packets carry: those the expressions name, their networks, and others.
const V4: &[[u8; 4]] = &[
    [10, 0, 0, 1],
    [192, 168, 1, 20],
    [10, 1, 2, 3],
    [10, 1, 0, 5],
    [0, 0, 0, 10],
    [10, 0, 0, 2],
    [192, 168, 7, 7],
    [172, 16, 0, 1],
];
/// IPv6 addresses.
const V6: &[&str] = &["::1", "2001:db8::5", "::ffff:10.0.0.1", "2001:db8:1::1", "fe80::1", "2001:db9::1"];
/// MAC addresses.
const MAC: &[[u8; 6]] = &[[0, 0x11, 0x22, 0x33, 0x44, 0x55], [0, 0x1b, 0x21, 0x0a, 0x0b, 0x0c], [2, 0, 0, 0, 0, 1]];
/// Ports (80 is also `0x50`, 8 is `010`).
const PORT: &[u16] = &[22, 80, 443, 8, 10, 65535, 53, 1024, 20];

impl Rng {
    fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn port(&mut self) -> [u8; 2] {
        if self.chance(80) { PORT[self.below(PORT.len())].to_be_bytes() } else { [self.byte(), self.byte()] }
    }

    fn v4(&mut self) -> [u8; 4] {
        if self.chance(85) { V4[self.below(V4.len())] } else { [self.byte(), self.byte(), self.byte(), self.byte()] }
    }

    fn v6(&mut self) -> [u8; 16] {
        if self.chance(85) {
            V6[self.below(V6.len())].parse::<std::net::Ipv6Addr>().expect("a valid address").octets()
        } else {
            self.bytes(16).try_into().expect("16 bytes")
        }
    }

    fn mac(&mut self) -> [u8; 6] {
        if self.chance(70) { MAC[self.below(MAC.len())] } else { self.bytes(6).try_into().expect("6 bytes") }
    }
}

/// A transport header (and a little payload) for protocol `proto`.
fn transport(r: &mut Rng, proto: u8) -> Vec<u8> {
    let mut t = Vec::new();
    match proto {
        6 => {
            t.extend(r.port());
            t.extend(r.port());
            t.extend(r.bytes(8));
            t.push(0x50);
            t.push(*[0x02_u8, 0x12, 0x10, 0x11, 0x04].get(r.below(6)).unwrap_or(&r.byte()));
            t.extend(r.bytes(6));
        }
        17 | 132 => {
            t.extend(r.port());
            t.extend(r.port());
            t.extend(r.bytes(if proto == 17 { 4 } else { 8 }));
        }
        1 | 58 => {
            t.push(*[8_u8, 0, 128, 129, 3].get(r.below(6)).unwrap_or(&r.byte()));
            t.extend(r.bytes(7));
        }
        _ => t.extend(r.bytes(8)),
    }
    let extra = r.below(48);
    t.extend(r.bytes(extra));
    t
}

fn proto(r: &mut Rng) -> u8 {
    [6, 17, 1, 132, 6, 17, 58, 0, 44].get(r.below(10)).copied().unwrap_or_else(|| r.byte())
}

fn ipv4(r: &mut Rng) -> Vec<u8> {
    let ihl = if r.chance(70) { 5 } else { 6 + r.below(10) };
    let proto = proto(r);
    let frag: u16 = match r.below(10) {
        0 => 0x4000,                                // DF
        1 => 0x2000,                                // first fragment, MF
        2 => 0x2000 | (1 + r.below(0x1ffe)) as u16, // a later fragment
        3 => (1 + r.below(0x1ffe)) as u16,          // the last fragment
        _ => 0,
    };
    let payload = transport(r, proto);
    let mut p = vec![0x40 | ihl as u8, r.byte()];
    p.extend(((ihl * 4 + payload.len()) as u16).to_be_bytes());
    p.extend(r.bytes(2));
    p.extend(frag.to_be_bytes());
    p.push(64);
    p.push(proto);
    p.extend([0, 0]);
    p.extend(r.v4());
    p.extend(r.v4());
    p.extend(r.bytes(4 * (ihl - 5)));
    p.extend(payload);
    p
}

fn ipv6(r: &mut Rng) -> Vec<u8> {
    let (next, ext) = match r.below(10) {
        0..=5 => (proto(r), Vec::new()),
        6 | 7 => {
            // A fragment header, first or later fragment.
            let inner = proto(r);
            let offset: u16 = if r.chance(50) { 0 } else { (1 + r.below(0x1ffe)) as u16 };
            let mut f = vec![inner, 0];
            f.extend((offset << 3 | u16::from(r.chance(50))).to_be_bytes());
            f.extend(r.bytes(4));
            (44, f)
        }
        8 => {
            // Hop-by-hop options, then TCP or UDP.
            let inner = if r.chance(50) { 6 } else { 17 };
            let mut h = vec![inner, 0];
            h.extend([1, 4, 0, 0, 0, 0]);
            (0, h)
        }
        _ => (r.byte(), Vec::new()),
    };
    let last = if ext.is_empty() { next } else { ext[0] };
    let payload = transport(r, last);
    let mut p = vec![0x60, 0, 0, 0];
    p.extend(((ext.len() + payload.len()) as u16).to_be_bytes());
    p.push(next);
    p.push(64);
    p.extend(r.v6());
    p.extend(r.v6());
    p.extend(ext);
    p.extend(payload);
    p
}

fn arp(r: &mut Rng) -> Vec<u8> {
    let mut p = vec![0, 1, 8, 0, 6, 4, 0, 1 + r.below(4) as u8];
    p.extend(r.mac());
    p.extend(r.v4());
    p.extend(r.mac());
    p.extend(r.v4());
    p
}

/// A random Ethernet frame, VLAN-tagged now and then, and the length it had on the wire
/// (sometimes more than was captured: a truncated frame).
pub fn frame(r: &mut Rng) -> (Vec<u8>, u32) {
    let mut f = Vec::new();
    f.extend(r.mac());
    f.extend(r.mac());
    let tags = match r.below(10) {
        0..=5 => 0,
        6..=8 => 1,
        _ => 2,
    };
    for _ in 0..tags {
        f.extend([[0x81_u8, 0x00], [0x88, 0xa8], [0x91, 0x00]][r.below(3)]);
        let vid: u16 = [10_u16, 0, 4095, 20].get(r.below(5)).copied().unwrap_or_else(|| r.below(4096) as u16);
        f.extend((vid | (r.below(8) as u16) << 13).to_be_bytes());
    }
    let (ethertype, payload) = payload(r);
    f.extend(ethertype.to_be_bytes());
    f.extend(payload);
    truncate_now_and_then(r, f)
}

/// A network-layer packet and its ethertype.
fn payload(r: &mut Rng) -> (u16, Vec<u8>) {
    match r.below(20) {
        0..=7 => (0x0800, ipv4(r)),
        8..=13 => (0x86dd, ipv6(r)),
        14 | 15 => (0x0806, arp(r)),
        16 => (0x8035, arp(r)),
        17 => (0x8100, Vec::new()),
        _ => (r.next_u64() as u16, {
            let n = r.below(60);
            r.bytes(n)
        }),
    }
}

/// The frame and its length on the wire, cut short 15 % of the time.
fn truncate_now_and_then(r: &mut Rng, mut f: Vec<u8>) -> (Vec<u8>, u32) {
    let wire = f.len() as u32;
    if r.chance(15) {
        let keep = 1 + r.below(f.len() - 1);
        f.truncate(keep);
    }
    (f, wire)
}

/// A random `LINUX_SLL2` frame (what `tcpdump -i any` records): protocol, reserved,
/// interface index, `ARPHRD_ETHER`, packet type, address length and an 8-byte address field,
/// then the network layer; sometimes truncated.
pub fn sll2_frame(r: &mut Rng) -> (Vec<u8>, u32) {
    let (protocol, payload) = payload(r);
    let mut f = protocol.to_be_bytes().to_vec();
    f.extend([0, 0]);
    f.extend((1 + r.below(8) as u32).to_be_bytes());
    f.extend(1_u16.to_be_bytes());
    f.push(r.below(5) as u8);
    f.push(6);
    f.extend(r.mac());
    f.extend([0, 0]);
    f.extend(payload);
    truncate_now_and_then(r, f)
}

/// Writes Ethernet `frames` (data, length on the wire) to a pcap file, frame `i` stamped at
/// second `i` so a filtered copy names which frames passed.
pub fn write_pcap(path: &std::path::Path, frames: &[(Vec<u8>, u32)]) {
    write_pcap_link(path, 1, frames);
}

/// [`write_pcap`] with link-layer type `dlt`.
pub fn write_pcap_link(path: &std::path::Path, dlt: u32, frames: &[(Vec<u8>, u32)]) {
    let mut out = Vec::new();
    out.extend(0xa1b2_c3d4_u32.to_le_bytes());
    out.extend(2_u16.to_le_bytes());
    out.extend(4_u16.to_le_bytes());
    out.extend([0; 8]);
    out.extend(262_144_u32.to_le_bytes());
    out.extend(dlt.to_le_bytes());
    for (i, (data, wire)) in frames.iter().enumerate() {
        out.extend((i as u32).to_le_bytes());
        out.extend(0_u32.to_le_bytes());
        out.extend((data.len() as u32).to_le_bytes());
        out.extend(wire.to_le_bytes());
        out.extend(data);
    }
    std::fs::write(path, out).expect("write the capture file");
}
