use super::*;

/// A compact rendering of the tree, so the tests read as the meaning they check.
fn show(e: &Expr) -> String {
    match e {
        Expr::And(a, b) => format!("({} & {})", show(a), show(b)),
        Expr::Or(a, b) => format!("({} | {})", show(a), show(b)),
        Expr::Not(a) => format!("!{}", show(a)),
        Expr::Rel(r, a, b) => format!("[{} {r:?} {}]", arith(a), arith(b)),
        Expr::Prim(p) => match p {
            Prim::Host { family, dir, addr } => format!("host({family:?},{dir:?},{addr})"),
            Prim::Net { family, dir, net } => format!("net({family:?},{dir:?},{net})"),
            Prim::Port { transport, dir, first, last } if first == last => {
                format!("port({transport:?},{dir:?},{first})")
            }
            Prim::Port { transport, dir, first, last } => format!("port({transport:?},{dir:?},{first}-{last})"),
            Prim::EtherHost { dir, mac } => format!("ether({dir:?},{mac:02x?})"),
            Prim::EtherProto(t) => format!("ethertype({t:#06x})"),
            Prim::Proto { family, number } => format!("proto({family:?},{number})"),
            Prim::Vlan(id) => format!("vlan({id:?})"),
        },
    }
}

fn arith(a: &Arith) -> String {
    match a {
        Arith::Num(n) => n.to_string(),
        Arith::Len => "len".to_owned(),
        Arith::Load { layer, offset, size } => format!("{layer:?}[{}:{size}]", arith(offset)),
        Arith::Neg(a) => format!("-{}", arith(a)),
        Arith::Bin(op, a, b) => format!("({} {op:?} {})", arith(a), arith(b)),
    }
}

fn parsed(text: &str) -> String {
    show(&parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}")))
}

fn error(text: &str) -> ParseError {
    parse(text).expect_err(text)
}

#[test]
fn and_and_or_share_one_precedence_and_associate_left_not_binds_tightest() {
    assert_eq!(
        parsed("host 10.0.0.1 or host 10.0.0.2 and tcp"),
        "((host(Any,Either,10.0.0.1) | host(Any,Either,10.0.0.2)) & proto(Any,6))"
    );
    assert_eq!(parsed("not tcp and udp"), "(!proto(Any,6) & proto(Any,17))");
    assert_eq!(parsed("! (tcp || udp) && ip6"), "(!(proto(Any,6) | proto(Any,17)) & ethertype(0x86dd))");
    assert_eq!(parsed("not not arp"), "!!ethertype(0x0806)");
}

#[test]
fn a_bare_id_repeats_the_previous_qualifiers() {
    assert_eq!(parsed("host 10.0.0.1 or 10.0.0.2"), "(host(Any,Either,10.0.0.1) | host(Any,Either,10.0.0.2))");
    assert_eq!(parsed("tcp dst port 21 or 80"), "(port(Tcp,Dst,21) | port(Tcp,Dst,80))");
    // libpcap's own example: `not host vs and ace` is `not host vs and host ace`.
    assert_eq!(parsed("not host 10.0.0.1 and 10.0.0.2"), "(!host(Any,Either,10.0.0.1) & host(Any,Either,10.0.0.2))");
    // Into parentheses, and across a change of type.
    assert_eq!(
        parsed("host 10.0.0.1 and (10.0.0.2 or 10.0.0.3) and port 22 or 23"),
        "(((host(Any,Either,10.0.0.1) & (host(Any,Either,10.0.0.2) | host(Any,Either,10.0.0.3))) & port(Any,Either,22)) | port(Any,Either,23))"
    );
    // After a group, the qualifiers from before it (libpcap's grammar), not its last term's.
    assert_eq!(
        parsed("host 10.0.0.1 and (port 1 or 2) and 10.0.0.3"),
        "((host(Any,Either,10.0.0.1) & (port(Any,Either,1) | port(Any,Either,2))) & host(Any,Either,10.0.0.3))"
    );
    assert!(error("(tcp) and 10.0.0.1").message.contains("needs a keyword"));
    assert_eq!(
        parsed("ip6 src net 2001:db8::/32 or 2001:db9::/32"),
        "(net(Ip6,Src,2001:db8::/32) | net(Ip6,Src,2001:db9::/32))"
    );
    assert_eq!(
        parsed("src port 80 and dst 10.0.0.1 or 10.0.0.2"),
        "((port(Any,Src,80) & host(Any,Dst,10.0.0.1)) | host(Any,Dst,10.0.0.2))"
    );
    let e = error("10.0.0.1");
    assert_eq!(e.column, 1, "{e}");
    assert!(e.message.contains("needs a keyword"), "{e}");
}

#[test]
fn directions_types_and_families() {
    assert_eq!(parsed("src 10.0.0.1"), "host(Any,Src,10.0.0.1)");
    assert_eq!(parsed("src or dst host ::1"), "host(Any,Either,::1)");
    assert_eq!(parsed("src and dst host 10.0.0.1"), "host(Any,Both,10.0.0.1)");
    assert_eq!(parsed("arp host 10.0.0.1"), "host(Arp,Either,10.0.0.1)");
    assert_eq!(parsed("ip src 10.0.0.1"), "host(Ip,Src,10.0.0.1)");
    // libpcap's quirks: partial dotted hosts are networks, a single number an address.
    assert_eq!(parsed("host 10.1"), "net(Any,Either,10.1.0.0/16)");
    assert_eq!(parsed("dst host 10.1.2"), "net(Any,Dst,10.1.2.0/24)");
    assert_eq!(parsed("host 10"), "host(Any,Either,0.0.0.10)");
    assert_eq!(parsed("host 443"), "host(Any,Either,0.0.1.187)");
    assert_eq!(parsed("net 70000"), "net(Any,Either,1.17.112.0/24)");
    assert_eq!(parsed("net 0"), "net(Any,Either,0.0.0.0/32)");
    assert_eq!(parsed("ether src 00:1b:21:aa:bb:0c"), "ether(Src,[00, 1b, 21, aa, bb, 0c])");
    assert_eq!(parsed("ether proto 0x88cc or ether proto \\arp"), "(ethertype(0x88cc) | ethertype(0x0806))");
    assert_eq!(parsed("udp portrange 8000-8099"), "port(Udp,Either,8000-8099)");
    assert_eq!(parsed("portrange 9-2"), "port(Any,Either,2-9)");
    // libpcap reads ranges with sscanf("%d-%d"): decimal, trailing junk after the second ignored.
    assert_eq!(parsed("portrange 010-22"), "port(Any,Either,10-22)");
    assert_eq!(parsed("portrange 80-0x50"), "port(Any,Either,0-80)");
    assert_eq!(parsed("portrange 010"), "port(Any,Either,8)");
    assert!(error("portrange 0x50-443").message.contains("not a port range"));
    assert_eq!(
        parsed("ip proto \\tcp or ip6 proto 17 or proto 132"),
        "((proto(Ip,6) | proto(Ip6,17)) | proto(Any,132))"
    );
    assert_eq!(parsed("ip proto 300"), "proto(Ip,300)");
    assert_eq!(parsed("tcp port not 80"), "!port(Tcp,Either,80)");
    assert_eq!(parsed("host (10.0.0.1 or 10.0.0.2)"), "(host(Any,Either,10.0.0.1) | host(Any,Either,10.0.0.2))");
    assert_eq!(parsed("icmp or icmp6 or sctp"), "((proto(Ip,1) | proto(Ip6,58)) | proto(Any,132))");
    assert_eq!(parsed("vlan and host 10.0.0.1"), "(vlan(None) & host(Any,Either,10.0.0.1))");
}

#[test]
fn networks_follow_libpcap_dotted_prefixes_masks_and_host_bit_rules() {
    assert_eq!(parsed("net 10"), "net(Any,Either,10.0.0.0/8)");
    assert_eq!(parsed("net 10.1"), "net(Any,Either,10.1.0.0/16)");
    assert_eq!(parsed("net 192.168.1"), "net(Any,Either,192.168.1.0/24)");
    assert_eq!(parsed("net 10.0.0.1"), "net(Any,Either,10.0.0.1/32)");
    assert_eq!(parsed("dst net 172.16.0.0/12"), "net(Any,Dst,172.16.0.0/12)");
    assert_eq!(parsed("net 10.1.0.0 mask 255.255.0.0"), "net(Any,Either,10.1.0.0/16)");
    let e = error("net 10.1.2.3/16");
    assert_eq!(e.column, 5);
    assert!(e.message.contains("host bits"), "{e}");
    let e = error("net 10.1.0.0 mask 255.0.255.0");
    assert_eq!(e.column, 19, "{e}");
    let e = error("ip6 net 2001:db8::1/32");
    assert!(e.message.contains("host bits"), "{e}");
}

#[test]
fn accessors_arithmetic_and_comparisons() {
    assert_eq!(parsed("tcp[tcpflags] & (tcp-syn|tcp-ack) != 0"), "[(Tcp[13:1] And (2 Or 16)) Ne 0]");
    // The seed's "IPv4 TCP to port N that is not a fragment".
    assert_eq!(
        parsed("ip and tcp dst port 22 and ip[6:2] & 0x1fff = 0"),
        "((ethertype(0x0800) & port(Tcp,Dst,22)) & [(Ip[6:2] And 8191) Eq 0])"
    );
    assert_eq!(parsed("len > 100 and less 1500"), "([len Gt 100] & [len Le 1500])");
    assert_eq!(parsed("greater 64"), "[len Ge 64]");
    assert_eq!(parsed("(ip[0] & 0xf) * 4 > 20"), "[((Ip[0:1] And 15) Mul 4) Gt 20]");
    assert_eq!(
        parsed("ether[12:2] = 0x0800 or icmp[icmptype] == icmp-echo"),
        "([Ether[12:2] Eq 2048] | [Icmp[0:1] Eq 8])"
    );
    assert_eq!(parsed("1 + 2 * 3 = 7"), "[(1 Add (2 Mul 3)) Eq 7]");
    assert_eq!(parsed("(len > 5)"), "[len Gt 5]");
    let e = error("ip[0:3] = 1");
    assert_eq!(e.column, 6, "{e}");
}

#[test]
fn unsupported_keywords_are_refused_by_name_with_their_column() {
    for (text, column, word) in [
        ("gateway 10.0.0.1", 1, "gateway"),
        ("tcp and ip multicast", 12, "multicast"),
        ("ether broadcast", 7, "broadcast"),
        ("host 10.0.0.1 or inbound", 18, "inbound"),
        ("ip protochain 6", 4, "protochain"),
    ] {
        let e = error(text);
        assert_eq!(e.column, column, "{text}: {e}");
        assert!(e.message.contains(word) && e.message.contains("does not support"), "{text}: {e}");
    }
}

#[test]
fn every_error_names_its_column() {
    for (text, column, says) in [
        ("", 1, "empty"),
        ("host", 5, "ended"),
        ("host example.com", 6, "not resolved"),
        ("port http", 6, "not resolved"),
        ("port 70000", 6, "above 65535"),
        ("tcp port 80 and", 16, "ended"),
        ("(tcp or udp", 12, "\")\""),
        ("tcp or udp)", 11, "unexpected"),
        ("host 10.0.0.1 $", 15, "unexpected character"),
        ("vlan 5000", 6, "above 4095"),
        ("ip6 host 10.0.0.1", 10, "ip6 with an IPv4"),
        ("tcp host 10.0.0.1", 1, "cannot qualify an address"),
        ("ip port 80", 1, "cannot qualify a port"),
        ("host 10.0.0.0/8", 6, "use net"),
        // Syntax errors in libpcap too (tcpdump -d says so).
        ("ip 10.0.0.1", 4, "after \"ip\""),
        ("ether 00:11:22:33:44:55", 7, "after \"ether\""),
        ("ip proto tcp", 10, "write \\tcp"),
        ("ether proto arp", 13, "write \\arp"),
        ("vlan 100 or 200", 13, "needs a keyword"),
        ("greater 10 or 20", 15, "needs a keyword"),
        ("tcp or 10.0.0.1", 8, "needs a keyword"),
    ] {
        let e = error(text);
        assert_eq!(e.column, column, "{text:?}: {e}");
        assert!(e.message.contains(says), "{text:?}: {e}");
    }
}

#[test]
fn size_and_depth_are_bounded() {
    let long = format!("host {}", "1".repeat(MAX_EXPRESSION));
    assert!(error(&long).message.contains("longer than"));
    let deep = format!("{}tcp{}", "(".repeat(MAX_DEPTH + 1), ")".repeat(MAX_DEPTH + 1));
    assert!(error(&deep).message.contains("nested deeper"), "{}", error(&deep));
    let nots = format!("{}tcp", "not ".repeat(MAX_DEPTH + 1));
    assert!(error(&nots).message.contains("nested deeper"));
    // Wide is fine: 1,000 hosts.
    let hosts: Vec<String> = (0..1000).map(|i| format!("10.0.{}.{}", i / 250, i % 250)).collect();
    let text = format!("not (host {})", hosts.join(" or "));
    assert!(parse(&text).is_ok());
}
