//! The capture filter language: a subset of pcap-filter(7), with libpcap's meaning.
//!
//! - `and`/`&&` and `or`/`||` have equal precedence and associate to the left; `not`/`!`
//!   binds tightest (`a or b and c` is `(a or b) and c`).
//! - A term that is only an address, a number or a range repeats the qualifiers of the term
//!   before it (`host a or b` is `host a or host b`; `tcp port 21 or 80` is `tcp port 21 or
//!   tcp port 80`; `not host a and b` is `not host a and host b`), through parentheses too.
//! - Addresses are literals: host and service names are not resolved (a name is an error
//!   that says so, never a lookup). libpcap's quirks are kept: `host 10.1` is the network
//!   10.1.0.0/16, `host 10` the address 0.0.0.10; a protocol name that is also a keyword
//!   needs a backslash (`ip proto \tcp`).
//!
//! - A bare ID is read only right after `and`/`or` or after qualifiers, as libpcap's
//!   grammar has it (`(10.0.0.1)` alone is an error; `host (a or b)` and `port not 80` are
//!   not), and after a parenthesized group it repeats the qualifiers from before the group.
//!
//! The oracle is tcpdump 4.99.3 / libpcap 1.10.3 (Debian bookworm): the accept/reject
//! differential in `integration/tests/capture.rs` runs random expressions through both. The
//! deliberate differences: an empty expression is refused (libpcap: everything), names are
//! never resolved (libpcap asks /etc/services, /etc/protocols and DNS), and dotted parts
//! above 255 are refused.
//!
//! Every error carries the 1-based column of the token it is about.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Longest expression accepted, in bytes.
pub const MAX_EXPRESSION: usize = 64 * 1024;
/// Deepest nesting of parentheses, brackets and `not`s accepted.
pub const MAX_DEPTH: usize = 64;

/// A parse error: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct ParseError {
    /// 1-based column (in bytes) of the offending token; one past the end for "ended early".
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

/// Direction qualifier of `host`, `net`, `port` and `ether host`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// No qualifier, or `src or dst`: either end.
    Either,
    /// `src`.
    Src,
    /// `dst`.
    Dst,
    /// `src and dst`: both ends.
    Both,
}

/// The network-layer protocols `host` and `net` apply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// No qualifier: IPv4, IPv6, ARP and RARP (by the address's own family).
    Any,
    /// `ip`.
    Ip,
    /// `ip6`.
    Ip6,
    /// `arp`.
    Arp,
    /// `rarp`.
    Rarp,
}

/// The transport a `port` applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// No qualifier: TCP, UDP or SCTP.
    Any,
    /// `tcp`.
    Tcp,
    /// `udp`.
    Udp,
    /// `sctp`.
    Sctp,
}

/// A layer whose bytes an accessor (`ip[6:2]`) reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// `ether[…]`: the link-layer header.
    Ether,
    /// `ip[…]`.
    Ip,
    /// `ip6[…]`.
    Ip6,
    /// `arp[…]`.
    Arp,
    /// `tcp[…]` (IPv4 only, as in libpcap).
    Tcp,
    /// `udp[…]` (IPv4 only).
    Udp,
    /// `icmp[…]` (IPv4 only).
    Icmp,
    /// `icmp6[…]`.
    Icmp6,
}

/// An arithmetic operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArOp {
    /// `+`.
    Add,
    /// `-`.
    Sub,
    /// `*`.
    Mul,
    /// `/`.
    Div,
    /// `%`.
    Mod,
    /// `&`.
    And,
    /// `|`.
    Or,
    /// `^`.
    Xor,
    /// `<<`.
    Shl,
    /// `>>`.
    Shr,
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rel {
    /// `=` or `==`.
    Eq,
    /// `!=`.
    Ne,
    /// `<`.
    Lt,
    /// `<=`.
    Le,
    /// `>`.
    Gt,
    /// `>=`.
    Ge,
}

/// An arithmetic expression (unsigned 32-bit, as in libpcap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arith {
    /// A constant.
    Num(u32),
    /// `len`: the packet's length on the wire.
    Len,
    /// `layer[offset : size]`, size 1, 2 or 4 bytes, network order.
    Load {
        /// Which header the offset is relative to.
        layer: Layer,
        /// Offset.
        offset: Box<Arith>,
        /// Bytes.
        size: u8,
    },
    /// `-a`.
    Neg(Box<Arith>),
    /// `a OP b`.
    Bin(ArOp, Box<Arith>, Box<Arith>),
}

/// A primitive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prim {
    /// `[family] [dir] host ADDR`.
    Host {
        /// Protocols.
        family: Family,
        /// Direction.
        dir: Dir,
        /// Address.
        addr: IpAddr,
    },
    /// `[family] [dir] net NET`.
    Net {
        /// Protocols.
        family: Family,
        /// Direction.
        dir: Dir,
        /// Network (host bits zero).
        net: IpNet,
    },
    /// `[transport] [dir] port N` and `portrange N-M` (`first == last` for `port`).
    Port {
        /// Transports.
        transport: Transport,
        /// Direction.
        dir: Dir,
        /// First port.
        first: u16,
        /// Last port.
        last: u16,
    },
    /// `ether [dir] host MAC`.
    EtherHost {
        /// Direction.
        dir: Dir,
        /// Address.
        mac: [u8; 6],
    },
    /// `ether proto N` (also what `ip`, `ip6`, `arp` and `rarp` alone mean); libpcap takes
    /// any 32-bit value (above 65535 it matches nothing).
    EtherProto(u32),
    /// `ip proto N`, `ip6 proto N` (`family` Ip or Ip6), `proto N` and `tcp`/`udp`/`sctp`
    /// (Any: either), `icmp` (Ip), `icmp6` (Ip6).
    Proto {
        /// Ip, Ip6 or Any.
        family: Family,
        /// Protocol number (above 255 it matches nothing, as in libpcap).
        number: u32,
    },
    /// `vlan [ID]`.
    Vlan(Option<u16>),
}

/// A filter expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// A primitive.
    Prim(Prim),
    /// `a REL b`, including what `less N` (`len <= N`) and `greater N` (`len >= N`) mean.
    Rel(Rel, Arith, Arith),
    /// `not a`.
    Not(Box<Expr>),
    /// `a and b`.
    And(Box<Expr>, Box<Expr>),
    /// `a or b`.
    Or(Box<Expr>, Box<Expr>),
}

/// pcap-filter keywords this language does not have, refused by name.
const UNSUPPORTED: &[&str] = &[
    "gateway",
    "broadcast",
    "multicast",
    "decnet",
    "atalk",
    "aarp",
    "iso",
    "esis",
    "isis",
    "clnp",
    "l1",
    "l2",
    "iih",
    "lsp",
    "snp",
    "csnp",
    "psnp",
    "stp",
    "ipx",
    "netbeui",
    "lat",
    "moprc",
    "mopdl",
    "sca",
    "wlan",
    "fddi",
    "tr",
    "ppp",
    "slip",
    "link",
    "radio",
    "mpls",
    "pppoed",
    "pppoes",
    "geneve",
    "vxlan",
    "inbound",
    "outbound",
    "ifname",
    "on",
    "rnr",
    "rulenum",
    "reason",
    "rset",
    "ruleset",
    "srnr",
    "srulenum",
    "subrule",
    "action",
    "type",
    "subtype",
    "dir",
    "addr1",
    "addr2",
    "addr3",
    "addr4",
    "ra",
    "ta",
    "llc",
    "vpi",
    "vci",
    "lane",
    "oamf4s",
    "oamf4e",
    "oamf4",
    "oam",
    "metac",
    "bcc",
    "sc",
    "ilmic",
    "connectmsg",
    "metaconnect",
    "protochain",
    "ah",
    "esp",
    "pim",
    "vrrp",
    "carp",
    "igmp",
    "igrp",
    "hdlc",
    "ifindex",
    "ip6multicast",
];

/// Named constants libpcap offers in arithmetic.
const CONSTANTS: &[(&str, u32)] = &[
    ("tcpflags", 13),
    ("tcp-fin", 0x01),
    ("tcp-syn", 0x02),
    ("tcp-rst", 0x04),
    ("tcp-push", 0x08),
    ("tcp-ack", 0x10),
    ("tcp-urg", 0x20),
    ("tcp-ece", 0x40),
    ("tcp-cwr", 0x80),
    ("icmptype", 0),
    ("icmpcode", 1),
    ("icmp-echoreply", 0),
    ("icmp-unreach", 3),
    ("icmp-sourcequench", 4),
    ("icmp-redirect", 5),
    ("icmp-echo", 8),
    ("icmp-routeradvert", 9),
    ("icmp-routersolicit", 10),
    ("icmp-timxceed", 11),
    ("icmp-paramprob", 12),
    ("icmp-tstamp", 13),
    ("icmp-tstampreply", 14),
    ("icmp-ireq", 15),
    ("icmp-ireqreply", 16),
    ("icmp-maskreq", 17),
    ("icmp-maskreply", 18),
    ("icmp6type", 0),
    ("icmp6code", 1),
];

/// Protocol names `ip proto`, `ip6 proto` and `proto` accept.
const PROTOCOLS: &[(&str, u32)] = &[("ip", 0), ("icmp", 1), ("tcp", 6), ("udp", 17), ("icmp6", 58), ("sctp", 132)];

/// Ethertype names `ether proto` accepts.
const ETHERTYPES: &[(&str, u32)] = &[("ip", 0x0800), ("arp", 0x0806), ("rarp", 0x8035), ("ip6", 0x86dd)];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// A word: keyword, number, address, range or name.
    Word(String),
    /// Punctuation and operators.
    Sym(&'static str),
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    column: usize,
}

fn err(column: usize, message: impl Into<String>) -> ParseError {
    ParseError { column, message: message.into() }
}

/// Symbols, longest first.
const SYMBOLS: &[&str] = &[
    "&&", "||", "==", "!=", "<=", ">=", "<<", ">>", "(", ")", "[", "]", ":", "!", "=", "<", ">", "+", "-", "*", "/",
    "%", "&", "|", "^",
];

fn lex(text: &str) -> Result<Vec<Token>, ParseError> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let (mut i, mut brackets) = (0, 0_usize);
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let word = |b: u8| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-' || b == b'/';
        if (word(c) && c != b'-' && c != b'/') || (c == b':' && brackets == 0) || c == b'\\' {
            // Outside brackets a word may hold colons (IPv6 and MAC addresses); inside, a
            // colon separates offset and size.
            let start = i;
            i += 1;
            while i < bytes.len() && (word(bytes[i]) || (bytes[i] == b':' && brackets == 0)) {
                // `-` and `/` only inside a word (ranges, CIDRs, names like tcp-syn), never
                // as arithmetic between a word and a number with spaces.
                i += 1;
            }
            out.push(Token { tok: Tok::Word(text[start..i].to_owned()), column: start + 1 });
            continue;
        }
        let Some(sym) = SYMBOLS.iter().find(|s| text[i..].starts_with(**s)) else {
            return Err(err(i + 1, format!("unexpected character {:?}", text[i..].chars().next().unwrap_or('?'))));
        };
        match *sym {
            "[" => brackets += 1,
            "]" => brackets = brackets.saturating_sub(1),
            _ => {}
        }
        out.push(Token { tok: Tok::Sym(sym), column: i + 1 });
        i += sym.len();
    }
    Ok(out)
}

/// A word and its column.
type Word = (String, usize);

/// What a bare address or number repeats (libpcap's "last qualifiers").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Host(Family),
    Net(Family),
    Port(Transport),
    PortRange(Transport),
    EtherHost,
    Proto(Family),
    EtherProto,
}

struct Parser {
    toks: Vec<Token>,
    link: crate::capture::Link,
    pos: usize,
    end: usize,
    last: Option<(Kind, Dir)>,
    depth: usize,
}

/// Parses a capture filter expression.
///
/// # Errors
/// The first problem found, with its column.
pub fn parse(text: &str) -> Result<Expr, ParseError> {
    parse_for(text, crate::capture::Link::Ethernet)
}

/// [`parse`] for frames of `link`: on `LINUX_SLL2` captures `ether host` and `vlan` are
/// errors, as in libpcap (there are no Ethernet addresses or tags to test).
pub fn parse_for(text: &str, link: crate::capture::Link) -> Result<Expr, ParseError> {
    if text.len() > MAX_EXPRESSION {
        return Err(err(MAX_EXPRESSION + 1, format!("the expression is longer than {MAX_EXPRESSION} bytes")));
    }
    let toks = lex(text)?;
    if toks.is_empty() {
        return Err(err(1, "the expression is empty (to capture everything, leave the filter out)"));
    }
    let mut p = Parser { toks, link, pos: 0, end: text.len() + 1, last: None, depth: 0 };
    let expr = p.expr()?;
    if let Some(t) = p.peek() {
        return Err(err(t.column, format!("unexpected {}", describe(&t.tok))));
    }
    Ok(expr)
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Word(w) => format!("{w:?}"),
        Tok::Sym(s) => format!("{s:?}"),
    }
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.toks.get(self.pos)
    }

    fn peek_word(&self) -> Option<&str> {
        match self.peek() {
            Some(Token { tok: Tok::Word(w), .. }) => Some(w.as_str()),
            _ => None,
        }
    }

    fn peek_sym(&self) -> Option<&'static str> {
        match self.peek() {
            Some(Token { tok: Tok::Sym(s), .. }) => Some(s),
            _ => None,
        }
    }

    fn column(&self) -> usize {
        self.peek().map_or(self.end, |t| t.column)
    }

    fn next_word(&mut self, what: &str) -> Result<(String, usize), ParseError> {
        match self.toks.get(self.pos) {
            Some(Token { tok: Tok::Word(w), column }) => {
                let out = (w.clone(), *column);
                self.pos += 1;
                Ok(out)
            }
            Some(t) => Err(err(t.column, format!("expected {what}, found {}", describe(&t.tok)))),
            None => Err(err(self.end, format!("the expression ended; expected {what}"))),
        }
    }

    fn eat_sym(&mut self, sym: &str) -> bool {
        if self.peek_sym() == Some(sym) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn eat_word(&mut self, word: &str) -> bool {
        if self.peek_word() == Some(word) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect_sym(&mut self, sym: &str) -> Result<(), ParseError> {
        if self.eat_sym(sym) {
            return Ok(());
        }
        match self.peek() {
            Some(t) => Err(err(t.column, format!("expected {sym:?}, found {}", describe(&t.tok)))),
            None => Err(err(self.end, format!("the expression ended; expected {sym:?}"))),
        }
    }

    fn deeper(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(err(self.column(), format!("nested deeper than {MAX_DEPTH} levels")));
        }
        Ok(())
    }

    /// `expr := term ((and | or) term)*`, left-associative, one precedence.
    fn expr(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.term()?;
        while let Some(and) = self.conjunction() {
            let right = self.operand_after_conjunction()?;
            left = join(and, left, right);
        }
        Ok(left)
    }

    /// `and`/`&&` (true) or `or`/`||` (false), consumed.
    fn conjunction(&mut self) -> Option<bool> {
        if self.eat_word("and") || self.eat_sym("&&") {
            Some(true)
        } else if self.eat_word("or") || self.eat_sym("||") {
            Some(false)
        } else {
            None
        }
    }

    /// What may follow `and`/`or`: a term, or — libpcap's `expr and id` — a bare ID that
    /// repeats the qualifiers before it (`host a or b`, `host a and not b`, `host a or (b or
    /// c)`). The ID reading is tried first; a term is read when it does not fit.
    fn operand_after_conjunction(&mut self) -> Result<Expr, ParseError> {
        if let Some((kind, dir)) = self.last {
            let (save, depth) = (self.pos, self.depth);
            match self.id(kind, dir) {
                Ok(e)
                    if self.peek().is_none_or(|t| {
                        matches!(&t.tok, Tok::Word(w) if w == "and" || w == "or")
                            || matches!(t.tok, Tok::Sym("&&" | "||" | ")"))
                    }) =>
                {
                    return Ok(e);
                }
                _ => (self.pos, self.depth, self.last) = (save, depth, Some((kind, dir))),
            }
        }
        self.term()
    }

    /// `( … ( NUMBER ) … )`: a parenthesized number as an ID.
    fn pnum(&mut self, kind: Kind, dir: Dir) -> Result<Expr, ParseError> {
        if self.eat_sym("(") {
            self.deeper()?;
            let inner = self.pnum(kind, dir)?;
            self.depth -= 1;
            self.expect_sym(")")?;
            return Ok(inner);
        }
        match self.peek_word() {
            Some(w) if number(w).is_some() => self.primitive(kind, dir),
            _ => Err(err(self.column(), "a group of addresses starts with an address, not another group")),
        }
    }

    /// libpcap's `id`: `not`s, then a bare address/number/range, or `( id (and|or) id … )`,
    /// read with the qualifiers `kind` and `dir`.
    fn id(&mut self, kind: Kind, dir: Dir) -> Result<Expr, ParseError> {
        if self.eat_word("not") || self.eat_sym("!") {
            self.deeper()?;
            let inner = self.id(kind, dir)?;
            self.depth -= 1;
            return Ok(Expr::Not(inner.into()));
        }
        if self.eat_sym("(") {
            self.deeper()?;
            // libpcap's `pid`: a group starts with an address or a number (`((a))` is a
            // syntax error there); after and/or, any ID, groups included.
            let mut left = if self.peek_sym() == Some("(") {
                // Only a number nests alone (libpcap's `pnum: NUM | '(' pnum ')'`).
                self.pnum(kind, dir)?
            } else {
                self.id(kind, dir)?
            };
            while let Some(and) = self.conjunction() {
                let right = self.id(kind, dir)?;
                left = join(and, left, right);
            }
            self.depth -= 1;
            self.expect_sym(")")?;
            return Ok(left);
        }
        self.primitive(kind, dir)
    }

    fn term(&mut self) -> Result<Expr, ParseError> {
        if self.eat_word("not") || self.eat_sym("!") {
            self.deeper()?;
            let inner = self.term()?;
            self.depth -= 1;
            return Ok(Expr::Not(inner.into()));
        }
        if self.peek_sym() == Some("(") {
            // `(` opens an expression or an arithmetic operand: try the comparison first.
            let (save, last, depth) = (self.pos, self.last, self.depth);
            if let Ok(rel) = self.relation() {
                return Ok(rel);
            }
            (self.pos, self.last, self.depth) = (save, last, depth);
            self.pos += 1;
            self.deeper()?;
            let inner = self.expr()?;
            self.depth -= 1;
            self.expect_sym(")")?;
            // After a parenthesized group a bare ID repeats the qualifiers from before the
            // group, not those of its last term (libpcap's grammar: `paren expr ')'`).
            self.last = last;
            return Ok(inner);
        }
        let Some((word, column)) = self.peek_word().map(str::to_owned).zip(Some(self.column())) else {
            return match self.peek() {
                Some(t) => Err(err(t.column, format!("expected a primitive, found {}", describe(&t.tok)))),
                None => Err(err(self.end, "the expression ended; expected a primitive")),
            };
        };
        if UNSUPPORTED.contains(&word.as_str()) {
            return Err(err(
                column,
                format!("{word:?} is a pcap-filter keyword this filter language does not support"),
            ));
        }
        if self.is_relation_start() {
            return self.relation();
        }
        match word.as_str() {
            "less" | "greater" => {
                self.pos += 1;
                let n = self.number("a length")?;
                let rel = if word == "less" { Rel::Le } else { Rel::Ge };
                self.last = None;
                Ok(Expr::Rel(rel, Arith::Len, Arith::Num(n)))
            }
            "vlan" => {
                if self.link != crate::capture::Link::Ethernet {
                    return Err(err(
                        self.column(),
                        "vlan: LINUX_SLL2 captures (the any pseudo-interface) have no VLAN tags to test",
                    ));
                }
                self.pos += 1;
                let id = match self.peek_word() {
                    Some(w) if w.bytes().all(|b| b.is_ascii_digit()) || w.starts_with("0x") => {
                        let (w, c) = self.next_word("a VLAN id")?;
                        Some(vlan_id(&w, c)?)
                    }
                    _ => None,
                };
                // libpcap does not repeat `vlan` for a bare number after it.
                self.last = None;
                Ok(Expr::Prim(Prim::Vlan(id)))
            }
            _ => self.qualified(),
        }
    }

    /// Whether the tokens ahead start a comparison: `len`, a number followed by an
    /// operator, a constant, or an accessor (`ip[`).
    fn is_relation_start(&self) -> bool {
        let Some(word) = self.peek_word() else { return false };
        let next = match self.toks.get(self.pos + 1) {
            Some(Token { tok: Tok::Sym(s), .. }) => Some(*s),
            _ => None,
        };
        if next == Some("[") && layer(word).is_some() {
            return true;
        }
        let operator = next.is_some_and(|s| !matches!(s, "(" | ")" | "!" | "&&" | "||" | "[" | "]" | ":"));
        word == "len" || (operator && (number(word).is_some() || CONSTANTS.iter().any(|(n, _)| *n == word)))
    }

    /// `arith REL arith`.
    fn relation(&mut self) -> Result<Expr, ParseError> {
        let left = self.arith(0)?;
        let column = self.column();
        let rel = match self.peek_sym() {
            Some("=" | "==") => Rel::Eq,
            Some("!=") => Rel::Ne,
            Some("<") => Rel::Lt,
            Some("<=") => Rel::Le,
            Some(">") => Rel::Gt,
            Some(">=") => Rel::Ge,
            _ => return Err(err(column, "expected a comparison (=, !=, <, <=, >, >=)")),
        };
        self.pos += 1;
        let right = self.arith(0)?;
        self.last = None;
        Ok(Expr::Rel(rel, left, right))
    }

    /// Precedence climbing over libpcap's operators: `| ^` < `&` < `<< >>` < `+ -` < `* / %`.
    fn arith(&mut self, min: u8) -> Result<Arith, ParseError> {
        let mut left = self.operand()?;
        loop {
            let (op, prec) = match self.peek_sym() {
                Some("|") => (ArOp::Or, 1),
                Some("^") => (ArOp::Xor, 1),
                Some("&") => (ArOp::And, 2),
                Some("<<") => (ArOp::Shl, 3),
                Some(">>") => (ArOp::Shr, 3),
                Some("+") => (ArOp::Add, 4),
                Some("-") => (ArOp::Sub, 4),
                Some("*") => (ArOp::Mul, 5),
                Some("/") => (ArOp::Div, 5),
                Some("%") => (ArOp::Mod, 5),
                _ => return Ok(left),
            };
            if prec < min {
                return Ok(left);
            }
            let column = self.column();
            self.pos += 1;
            let right = self.arith(prec + 1)?;
            // libpcap checks the first instruction of the right operand, a constant load for
            // a literal and for an accessor whose index starts with one: `x / ip[0]` is a
            // "division by zero" there, and `x << ip[40]` a shift by more than 31 bits.
            match (op, first_constant(&right)) {
                (ArOp::Div, Some(0)) => {
                    return Err(err(
                        column,
                        "division by zero (libpcap's check: the divisor starts with the constant 0)",
                    ));
                }
                (ArOp::Mod, Some(0)) => {
                    return Err(err(
                        column,
                        "modulus by zero (libpcap's check: the divisor starts with the constant 0)",
                    ));
                }
                (ArOp::Shl | ArOp::Shr, Some(k)) if k > 31 => {
                    return Err(err(
                        column,
                        format!("shift by more than 31 bits (libpcap's check: the shift starts with the constant {k})"),
                    ));
                }
                _ => {}
            }
            left = Arith::Bin(op, left.into(), right.into());
        }
    }

    fn operand(&mut self) -> Result<Arith, ParseError> {
        if self.eat_sym("(") {
            self.deeper()?;
            let inner = self.arith(0)?;
            self.depth -= 1;
            self.expect_sym(")")?;
            return Ok(inner);
        }
        if self.eat_sym("-") {
            self.deeper()?;
            let inner = self.operand()?;
            self.depth -= 1;
            return Ok(Arith::Neg(inner.into()));
        }
        let (word, column) = self.next_word("a number, len or an accessor such as ip[0]")?;
        if word == "len" {
            return Ok(Arith::Len);
        }
        if let Some(layer) = layer(&word).filter(|_| self.peek_sym() == Some("[")) {
            self.pos += 1;
            self.deeper()?;
            let offset = self.arith(0)?;
            self.depth -= 1;
            let size = if self.eat_sym(":") {
                let (w, c) = self.next_word("an accessor size (1, 2 or 4)")?;
                match number(&w) {
                    Some(n @ (1 | 2 | 4)) => n as u8,
                    _ => return Err(err(c, format!("an accessor reads 1, 2 or 4 bytes, not {w:?}"))),
                }
            } else {
                1
            };
            self.expect_sym("]")?;
            return Ok(Arith::Load { layer, offset: offset.into(), size });
        }
        if let Some(n) = number(&word) {
            return Ok(Arith::Num(n));
        }
        if let Some((_, n)) = CONSTANTS.iter().find(|(name, _)| *name == word) {
            return Ok(Arith::Num(*n));
        }
        Err(err(column, format!("expected a number, len or an accessor such as ip[0], found {word:?}")))
    }

    fn number(&mut self, what: &str) -> Result<u32, ParseError> {
        let (w, c) = self.next_word(what)?;
        number(&w).ok_or_else(|| err(c, format!("expected {what}, found {w:?}")))
    }

    /// `[proto] [dir] [type] ID`, or a bare ID repeating the previous qualifiers.
    fn qualified(&mut self) -> Result<Expr, ParseError> {
        let start = self.column();
        let (mut proto, mut dir, mut kind): (Option<Word>, Option<Dir>, Option<Word>) = (None, None, None);
        if let Some(w) = self.peek_word().filter(|w| is_proto(w)) {
            let w = w.to_owned();
            proto = Some((w, self.column()));
            self.pos += 1;
        }
        if let Some(d) = self.direction() {
            dir = Some(d);
        }
        if let Some(w) = self.peek_word().filter(|w| matches!(*w, "host" | "net" | "port" | "portrange" | "proto")) {
            kind = Some((w.to_owned(), self.column()));
            self.pos += 1;
        }
        match (proto, dir, kind) {
            (None, None, None) => {
                // A bare ID is only read right after `and`/`or` (operand_after_conjunction).
                let (w, c) = self.next_word("a primitive")?;
                Err(err(c, format!("{w:?} needs a keyword before it (host, net, port, …)")))
            }
            (Some((p, c)), None, None) => {
                // A protocol alone: `ip`, `tcp`, …; an ID right after it (`ip 10.0.0.1`) is a
                // syntax error in libpcap too.
                if let Some((w, wc)) =
                    self.peek_word().filter(|w| !matches!(*w, "and" | "or")).map(str::to_owned).zip(Some(self.column()))
                {
                    if UNSUPPORTED.contains(&w.as_str()) {
                        return Err(err(
                            wc,
                            format!("{w:?} is a pcap-filter keyword this filter language does not support"),
                        ));
                    }
                    return Err(err(wc, format!("unexpected {w:?} after {p:?} (write {p} host, {p} net, …)")));
                }
                let prim = protocol_alone(&p)
                    .ok_or_else(|| err(c, format!("{p:?} needs host, net, port or proto after it")))?;
                self.last = None;
                Ok(Expr::Prim(prim))
            }
            (proto, dir, kind) => {
                let dir = dir.unwrap_or(Dir::Either);
                let kind = resolve_kind(proto.as_ref(), kind.as_ref(), dir, start)?;
                self.last = Some((kind, dir));
                // `tcp port not 80`, `host (a or b)`: the ID may carry nots and groups.
                self.id(kind, dir)
            }
        }
    }

    /// `src`, `dst`, `src or dst`, `src and dst`.
    fn direction(&mut self) -> Option<Dir> {
        let first = match self.peek_word() {
            Some("src") => Dir::Src,
            Some("dst") => Dir::Dst,
            _ => return None,
        };
        self.pos += 1;
        // `src or dst` / `src and dst` only when the other direction follows.
        let other = if first == Dir::Src { "dst" } else { "src" };
        if let (Some(Token { tok: Tok::Word(conj), .. }), Some(Token { tok: Tok::Word(second), .. })) =
            (self.toks.get(self.pos), self.toks.get(self.pos + 1))
            && second == other
            && (conj == "or" || conj == "and")
        {
            let both = conj == "and";
            self.pos += 2;
            return Some(if both { Dir::Both } else { Dir::Either });
        }
        Some(first)
    }

    /// The ID of a primitive of `kind`.
    fn primitive(&mut self, kind: Kind, dir: Dir) -> Result<Expr, ParseError> {
        let (id, column) = self.next_word("an address, a network or a number")?;
        if UNSUPPORTED.contains(&id.as_str()) {
            return Err(err(column, format!("{id:?} is a pcap-filter keyword this filter language does not support")));
        }
        let prim = match kind {
            Kind::Host(family) => match dotted(&id) {
                // libpcap's quirks, kept: `host 10.1` and `host 10.1.2` are the networks
                // 10.1.0.0/16 and 10.1.2.0/24, and `host 10` is the address 0.0.0.10.
                Some((_, parts @ (2 | 3))) => {
                    let net = network(&id, column)?;
                    check_family(family, net.addr(), column)?;
                    debug_assert_eq!(net.prefix_len(), 8 * parts);
                    Prim::Net { family, dir, net }
                }
                _ if let Some(n) = number(&id) => {
                    // A number is the 32-bit address itself (`host 443` is 0.0.1.187).
                    let addr = IpAddr::V4(Ipv4Addr::from(n));
                    check_family(family, addr, column)?;
                    Prim::Host { family, dir, addr }
                }
                _ => {
                    let addr = address(&id, column)?;
                    check_family(family, addr, column)?;
                    Prim::Host { family, dir, addr }
                }
            },
            Kind::Net(family) => {
                let net = if self.eat_word("mask") {
                    let (m, mc) = self.next_word("a netmask")?;
                    net_with_mask(&id, column, &m, mc)?
                } else if let Some(n) = number(&id) {
                    short_net(n)
                } else {
                    network(&id, column)?
                };
                check_family(family, net.addr(), column)?;
                Prim::Net { family, dir, net }
            }
            Kind::Port(transport) => {
                let port = port(&id, column)?;
                Prim::Port { transport, dir, first: port, last: port }
            }
            Kind::PortRange(transport) => {
                let (first, last) = port_range(&id, column)?;
                let (first, last) = (first.min(last), first.max(last));
                Prim::Port { transport, dir, first, last }
            }
            Kind::EtherHost if self.link != crate::capture::Link::Ethernet => {
                return Err(err(
                    column,
                    "ether host: LINUX_SLL2 captures (the any pseudo-interface) have no Ethernet addresses",
                ));
            }
            Kind::EtherHost => Prim::EtherHost { dir, mac: mac(&id, column)? },
            Kind::Proto(family) => Prim::Proto { family, number: protocol_number(&id, column)? },
            Kind::EtherProto => Prim::EtherProto(ethertype(&id, column)?),
        };
        Ok(Expr::Prim(prim))
    }
}

/// The constant libpcap's code for `a` starts by loading, if it starts with one.
fn first_constant(a: &Arith) -> Option<u32> {
    match a {
        Arith::Num(k) => Some(*k),
        Arith::Len => None,
        Arith::Load { offset, .. } => first_constant(offset),
        Arith::Neg(a) | Arith::Bin(_, a, _) => first_constant(a),
    }
}

fn join(and: bool, left: Expr, right: Expr) -> Expr {
    if and { Expr::And(left.into(), right.into()) } else { Expr::Or(left.into(), right.into()) }
}

fn is_proto(w: &str) -> bool {
    matches!(w, "ether" | "ip" | "ip6" | "arp" | "rarp" | "tcp" | "udp" | "sctp" | "icmp" | "icmp6")
}

fn layer(w: &str) -> Option<Layer> {
    Some(match w {
        "ether" => Layer::Ether,
        "ip" => Layer::Ip,
        "ip6" => Layer::Ip6,
        "arp" => Layer::Arp,
        "tcp" => Layer::Tcp,
        "udp" => Layer::Udp,
        "icmp" => Layer::Icmp,
        "icmp6" => Layer::Icmp6,
        _ => return None,
    })
}

/// `ip`, `tcp`, … alone.
fn protocol_alone(p: &str) -> Option<Prim> {
    Some(match p {
        "ip" => Prim::EtherProto(0x0800),
        "ip6" => Prim::EtherProto(0x86dd),
        "arp" => Prim::EtherProto(0x0806),
        "rarp" => Prim::EtherProto(0x8035),
        "tcp" => Prim::Proto { family: Family::Any, number: 6 },
        "udp" => Prim::Proto { family: Family::Any, number: 17 },
        "sctp" => Prim::Proto { family: Family::Any, number: 132 },
        "icmp" => Prim::Proto { family: Family::Ip, number: 1 },
        "icmp6" => Prim::Proto { family: Family::Ip6, number: 58 },
        _ => return None,
    })
}

/// The primitive kind a `proto dir type` combination names.
fn resolve_kind(proto: Option<&Word>, kind: Option<&Word>, dir: Dir, start: usize) -> Result<Kind, ParseError> {
    let p = proto.map(|(p, _)| p.as_str());
    let family = |c: usize| -> Result<Family, ParseError> {
        Ok(match p {
            None => Family::Any,
            Some("ip") => Family::Ip,
            Some("ip6") => Family::Ip6,
            Some("arp") => Family::Arp,
            Some("rarp") => Family::Rarp,
            Some(other) => return Err(err(c, format!("{other:?} cannot qualify an address or a network"))),
        })
    };
    let transport = |c: usize| -> Result<Transport, ParseError> {
        Ok(match p {
            None => Transport::Any,
            Some("tcp") => Transport::Tcp,
            Some("udp") => Transport::Udp,
            Some("sctp") => Transport::Sctp,
            Some(other) => return Err(err(c, format!("{other:?} cannot qualify a port (tcp, udp or sctp can)"))),
        })
    };
    let proto_column = proto.map_or(start, |(_, c)| *c);
    Ok(match kind.map(|(k, c)| (k.as_str(), *c)) {
        // `src 10.0.0.1`: host is the default type.
        None | Some(("host", _)) if p == Some("ether") => Kind::EtherHost,
        None | Some(("host", _)) => Kind::Host(family(proto_column)?),
        Some(("net", c)) => {
            if p == Some("ether") {
                return Err(err(c, "ether net does not exist (ether host does)"));
            }
            Kind::Net(family(proto_column)?)
        }
        Some(("port", _)) => Kind::Port(transport(proto_column)?),
        Some(("portrange", _)) => Kind::PortRange(transport(proto_column)?),
        Some(("proto", c)) => {
            if dir != Dir::Either {
                return Err(err(c, "proto takes no direction"));
            }
            match p {
                Some("ether") => Kind::EtherProto,
                None => Kind::Proto(Family::Any),
                Some("ip") => Kind::Proto(Family::Ip),
                Some("ip6") => Kind::Proto(Family::Ip6),
                Some(other) => {
                    return Err(err(
                        proto_column,
                        format!("{other:?} proto is not supported (ip, ip6, ether and bare proto are)"),
                    ));
                }
            }
        }
        Some((other, c)) => return Err(err(c, format!("unexpected {other:?}"))),
    })
}

fn number(w: &str) -> Option<u32> {
    if let Some(hex) = w.strip_prefix("0x").or_else(|| w.strip_prefix("0X")) {
        return u32::from_str_radix(hex, 16).ok();
    }
    if w.len() > 1 && w.starts_with('0') && w.bytes().all(|b| b.is_ascii_digit()) {
        return u32::from_str_radix(&w[1..], 8).ok();
    }
    if w.bytes().all(|b| b.is_ascii_digit()) { w.parse().ok() } else { None }
}

fn port(w: &str, column: usize) -> Result<u16, ParseError> {
    match number(w) {
        Some(n) => u16::try_from(n).map_err(|_| err(column, format!("port {n} is above 65535"))),
        None if w.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => {
            Err(err(column, format!("port names are not resolved here; write the number instead of {w:?}")))
        }
        None => Err(err(column, format!("expected a port number, found {w:?}"))),
    }
}

/// A `portrange` ID as libpcap 1.10 reads it (`sscanf("%d-%d")`): decimal only, and the
/// second number is its leading digits (`80-0x50` is 80-0); a single port is that port
/// (`portrange 80`, read as a port).
fn port_range(w: &str, column: usize) -> Result<(u16, u16), ParseError> {
    let Some((a, b)) = w.split_once('-') else {
        let p = port(w, column)?;
        return Ok((p, p));
    };
    let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
    let (na, nb) = (digits(a), digits(b));
    if na == 0 || na != a.len() || nb == 0 {
        return Err(err(column, format!("{w:?} is not a port range (FIRST-LAST, decimal)")));
    }
    let parse = |s: &str| {
        s.parse::<u32>()
            .ok()
            .and_then(|n| u16::try_from(n).ok())
            .ok_or_else(|| err(column, format!("port {s} is above 65535")))
    };
    let (first, last) = (parse(a)?, parse(&b[..nb])?);
    Ok((first.min(last), first.max(last)))
}

fn vlan_id(w: &str, column: usize) -> Result<u16, ParseError> {
    match number(w) {
        Some(n) if n <= 4095 => Ok(n as u16),
        Some(n) => Err(err(column, format!("VLAN id {n} is above 4095"))),
        None => Err(err(column, format!("expected a VLAN id, found {w:?}"))),
    }
}

/// A name that is also a keyword must be written with libpcap's backslash (`ip proto \tcp`,
/// `ether proto \arp`): unescaped, libpcap reads it as the keyword and fails.
fn escaped_name<T: Copy>(table: &[(&str, T)], w: &str, column: usize) -> Result<Option<T>, ParseError> {
    if let Some(name) = w.strip_prefix('\\') {
        return table
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| Some(*v))
            .ok_or_else(|| err(column, format!("unknown name {name:?}")));
    }
    if table.iter().any(|(n, _)| *n == w) {
        return Err(err(column, format!("{w:?} is a keyword here: write \\{w} (or the number)")));
    }
    Ok(None)
}

/// A protocol number; libpcap takes any 32-bit value (above 255 it matches nothing).
fn protocol_number(w: &str, column: usize) -> Result<u32, ParseError> {
    if let Some(n) = escaped_name(PROTOCOLS, w, column)? {
        return Ok(n);
    }
    match number(w) {
        Some(n) => Ok(n),
        None => {
            Err(err(column, format!("unknown protocol {w:?} (a number, or \\icmp, \\tcp, \\udp, \\icmp6, \\sctp)")))
        }
    }
}

fn ethertype(w: &str, column: usize) -> Result<u32, ParseError> {
    if let Some(n) = escaped_name(ETHERTYPES, w, column)? {
        return Ok(n);
    }
    match number(w) {
        // libpcap reads an 802.2 LLC header for these (a length, not a type, is in the
        // Ethernet header); that framing is not part of this language.
        Some(n) if n <= 1500 => {
            Err(err(column, format!("ether proto {n}: values up to 1500 are 802.3 lengths (LLC SAPs), not supported")))
        }
        Some(n) => Ok(n),
        None => Err(err(column, format!("unknown ethertype {w:?} (a number, or \\ip, \\ip6, \\arp, \\rarp)"))),
    }
}

fn address(w: &str, column: usize) -> Result<IpAddr, ParseError> {
    if let Ok(v6) = w.parse::<Ipv6Addr>() {
        return Ok(IpAddr::V6(v6));
    }
    if let Ok(v4) = w.parse::<Ipv4Addr>() {
        return Ok(IpAddr::V4(v4));
    }
    if w.contains('/') {
        return Err(err(column, format!("{w:?} is a network: use net, not host")));
    }
    Err(err(column, format!("{w:?} is not an address (host names are not resolved here)")))
}

/// `net` IDs: CIDR, a full address (/32 or /128), or libpcap's dotted prefixes (`10` /8,
/// `10.1` /16, `10.1.2` /24). Host bits set are an error, as in libpcap.
fn network(w: &str, column: usize) -> Result<IpNet, ParseError> {
    let (addr_text, len) = match w.split_once('/') {
        Some((a, l)) => (a, Some(l.parse::<u8>().map_err(|_| err(column, format!("bad prefix length in {w:?}")))?)),
        None => (w, None),
    };
    let addr = if let Ok(v6) = addr_text.parse::<Ipv6Addr>() {
        IpAddr::V6(v6)
    } else if let Some(v4) = dotted(addr_text) {
        let (v4, parts) = v4;
        let default = 8 * parts;
        return checked(IpAddr::V4(v4), len.unwrap_or(default), w, column);
    } else {
        return Err(err(column, format!("{w:?} is not a network")));
    };
    checked(addr, len.unwrap_or(128), w, column)
}

/// `net N` for a number N, as libpcap promotes a short net number: shifted left a byte at a
/// time until its top byte is not zero (`net 10` is 10.0.0.0/8, `net 70000` 1.17.112.0/24).
fn short_net(n: u32) -> IpNet {
    let (mut v, mut mask) = (n, u32::MAX);
    while v != 0 && v & 0xff00_0000 == 0 {
        v <<= 8;
        mask <<= 8;
    }
    IpNet::new(IpAddr::V4(Ipv4Addr::from(v)), mask.leading_ones() as u8).unwrap_or_default()
}

/// `a`, `a.b`, `a.b.c` or `a.b.c.d` and how many parts it had.
fn dotted(w: &str) -> Option<(Ipv4Addr, u8)> {
    let parts: Vec<&str> = w.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut octets = [0_u8; 4];
    for (i, p) in parts.iter().enumerate() {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        octets[i] = p.parse().ok()?;
    }
    Some((Ipv4Addr::from(octets), parts.len() as u8))
}

fn checked(addr: IpAddr, len: u8, w: &str, column: usize) -> Result<IpNet, ParseError> {
    let net = IpNet::new(addr, len).map_err(|_| err(column, format!("prefix length {len} is too long in {w:?}")))?;
    if net.trunc() != net {
        return Err(err(column, format!("{w:?} has host bits set (the network is {})", net.trunc())));
    }
    Ok(net)
}

fn net_with_mask(w: &str, column: usize, mask: &str, mask_column: usize) -> Result<IpNet, ParseError> {
    let (Some((addr, 4)), Some((mask_addr, 4))) = (dotted(w), dotted(mask)) else {
        return Err(err(mask_column, "net … mask takes a full IPv4 address and a full IPv4 netmask"));
    };
    let m = u32::from(mask_addr);
    if m.leading_ones() + m.trailing_zeros() != 32 {
        return Err(err(mask_column, format!("{mask:?} is not a contiguous netmask")));
    }
    checked(IpAddr::V4(addr), m.leading_ones() as u8, &format!("{w} mask {mask}"), column)
}

fn mac(w: &str, column: usize) -> Result<[u8; 6], ParseError> {
    let parts: Vec<&str> = w.split([':', '-', '.']).collect();
    let mut out = [0_u8; 6];
    if parts.len() == 6 && parts.iter().all(|p| !p.is_empty() && p.len() <= 2) {
        for (o, p) in out.iter_mut().zip(&parts) {
            *o = u8::from_str_radix(p, 16).map_err(|_| err(column, format!("{w:?} is not a MAC address")))?;
        }
        return Ok(out);
    }
    Err(err(column, format!("{w:?} is not a MAC address (xx:xx:xx:xx:xx:xx)")))
}

fn check_family(family: Family, addr: IpAddr, column: usize) -> Result<(), ParseError> {
    match (family, addr) {
        (Family::Ip6, IpAddr::V4(_)) => Err(err(column, "ip6 with an IPv4 address")),
        (Family::Ip | Family::Arp | Family::Rarp, IpAddr::V6(_)) => {
            Err(err(column, "an IPv6 address with ip, arp or rarp"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
