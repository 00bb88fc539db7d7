//! The gdb remote serial protocol, as far as memrace uses it with QEMU's gdbstub:
//! packet framing, stop replies, hex payloads and the target description.

/// Frame `payload` as `$payload#cs`. Our payloads are ASCII hex and commands, which
/// never contain the characters that would need escaping (`$#}*`).
pub fn frame(payload: &str) -> Vec<u8> {
    let sum = payload.bytes().fold(0u8, |a, b| a.wrapping_add(b));
    format!("${payload}#{sum:02x}").into_bytes()
}

/// Incremental decoder of the server's byte stream into packet payloads.
/// Acks (`+`/`-`) and noise between packets are skipped; `}` escapes and `*`
/// run-length encoding are expanded; packets with a bad checksum are dropped.
#[derive(Default)]
pub struct PacketDecoder {
    state: DecodeState,
    data: Vec<u8>,
    sum: u8,
    check: Vec<u8>,
}

#[derive(Default, PartialEq)]
enum DecodeState {
    #[default]
    Idle,
    Data,
    /// After `}`: the next byte is XOR 0x20.
    Escape,
    /// After `*`: the next byte minus 29 repeats the previous byte.
    RunLength,
    Checksum,
}

/// Longest packet we accept; QEMU's are far smaller. Guards memory against a broken peer.
const MAX_PACKET: usize = 1 << 20;

impl PacketDecoder {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for &b in bytes {
            match self.state {
                DecodeState::Idle => {
                    if b == b'$' {
                        self.state = DecodeState::Data;
                        self.data.clear();
                        self.sum = 0;
                    }
                }
                DecodeState::Data if b == b'#' => {
                    self.state = DecodeState::Checksum;
                    self.check.clear();
                }
                DecodeState::Data => {
                    self.sum = self.sum.wrapping_add(b);
                    match b {
                        b'}' => self.state = DecodeState::Escape,
                        b'*' => self.state = DecodeState::RunLength,
                        _ => self.data.push(b),
                    }
                }
                DecodeState::Escape => {
                    self.sum = self.sum.wrapping_add(b);
                    self.state = DecodeState::Data;
                    self.data.push(b ^ 0x20);
                }
                DecodeState::RunLength => {
                    self.sum = self.sum.wrapping_add(b);
                    self.state = DecodeState::Data;
                    if let Some(&prev) = self.data.last() {
                        let repeat = usize::from(b.saturating_sub(29));
                        self.data.extend(std::iter::repeat_n(prev, repeat));
                    }
                }
                DecodeState::Checksum => {
                    self.check.push(b);
                    if self.check.len() == 2 {
                        self.state = DecodeState::Idle;
                        let want = std::str::from_utf8(&self.check).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                        if want == Some(self.sum) {
                            out.push(std::mem::take(&mut self.data));
                        }
                    }
                }
            }
            if self.data.len() > MAX_PACKET {
                self.state = DecodeState::Idle;
                self.data.clear();
            }
        }
        out
    }
}

/// A stop reply (`T05thread:02;…`, `S05`) or the end of the target (`W`/`X`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    Signal { signal: u8, thread: Option<String> },
    Exited,
}

/// Parse a stop reply; `None` if the packet is not one.
pub fn parse_stop(packet: &[u8]) -> Option<Stop> {
    let text = std::str::from_utf8(packet).ok()?;
    let kind = text.chars().next()?;
    match kind {
        'W' | 'X' => Some(Stop::Exited),
        'S' | 'T' => {
            let signal = u8::from_str_radix(text.get(1..3)?, 16).ok()?;
            let thread = text.get(3..).and_then(|rest| {
                rest.split(';').find_map(|kv| kv.strip_prefix("thread:").map(str::to_string))
            });
            Some(Stop::Signal { signal, thread })
        }
        _ => None,
    }
}

pub fn decode_hex(text: &[u8]) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.chunks(2)
        .map(|pair| std::str::from_utf8(pair).ok().and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// One register of the target description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegDesc {
    pub name: String,
    pub regnum: usize,
    pub bits: usize,
}

/// Registers declared in a target-description XML document, in order, continuing the
/// numbering from `next` (documents split across `xi:include`d annexes share it).
pub fn parse_regs(xml: &str, next: &mut usize) -> Vec<RegDesc> {
    // QEMU's descriptions comment registers out (`<!--reg name="cs_base" …/-->`):
    // those do not exist and must not take a number.
    let mut live = String::with_capacity(xml.len());
    let mut rest = xml;
    while let Some(start) = rest.find("<!--") {
        live.push_str(&rest[..start]);
        rest = rest[start..].find("-->").map(|end| &rest[start + end + 3..]).unwrap_or("");
    }
    live.push_str(rest);
    let mut regs = Vec::new();
    for tag in live.split("<reg ").skip(1) {
        let tag = tag.split('>').next().unwrap_or("");
        let attr = |key: &str| {
            tag.split(&format!("{key}=\"")).nth(1).and_then(|rest| rest.split('"').next()).map(str::to_string)
        };
        let (Some(name), Some(bits)) = (attr("name"), attr("bitsize").and_then(|b| b.parse().ok())) else {
            continue;
        };
        if let Some(n) = attr("regnum").and_then(|r| r.parse().ok()) {
            *next = n;
        }
        regs.push(RegDesc { name, regnum: *next, bits });
        *next += 1;
    }
    regs
}

/// `href`s of `<xi:include>` elements, in document order.
pub fn includes(xml: &str) -> Vec<String> {
    xml.split("<xi:include")
        .skip(1)
        .filter_map(|t| t.split("href=\"").nth(1).and_then(|r| r.split('"').next()).map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_decodes_packets() {
        assert_eq!(frame("g"), b"$g#67".to_vec());
        let mut d = PacketDecoder::default();
        let mut stream = b"+$OK#9a".to_vec();
        stream.extend_from_slice(b"$T05thread:02;#");
        let sum = b"T05thread:02;".iter().fold(0u8, |a, b| a.wrapping_add(*b));
        stream.extend_from_slice(format!("{sum:02x}").as_bytes());
        assert_eq!(d.push(&stream), vec![b"OK".to_vec(), b"T05thread:02;".to_vec()]);
        // Split across reads, and a corrupt checksum is dropped.
        assert!(d.push(b"$O").is_empty());
        assert_eq!(d.push(b"K#9a$OK#00"), vec![b"OK".to_vec()]);
    }

    #[test]
    fn expands_escapes_and_run_length() {
        let mut d = PacketDecoder::default();
        // "0* " = '0' repeated 1 + (' ' - 29) = 4 times in total.
        let body = b"0* ";
        let sum = body.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        let mut s = vec![b'$'];
        s.extend_from_slice(body);
        s.extend_from_slice(format!("#{sum:02x}").as_bytes());
        assert_eq!(d.push(&s), vec![b"0000".to_vec()]);
        let body = [b'a', b'}', b'#' ^ 0x20];
        let sum = body.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        let mut s = vec![b'$'];
        s.extend_from_slice(&body);
        s.extend_from_slice(format!("#{sum:02x}").as_bytes());
        assert_eq!(d.push(&s), vec![b"a#".to_vec()]);
    }

    #[test]
    fn decoder_survives_garbage() {
        let mut d = PacketDecoder::default();
        let mut seed = 0x1234_5678u32;
        let noise: Vec<u8> = (0..200_000)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                (seed & 0xff) as u8
            })
            .collect();
        let _ = d.push(&noise);
    }

    #[test]
    fn parses_stop_replies() {
        assert_eq!(parse_stop(b"T05thread:02;"), Some(Stop::Signal { signal: 5, thread: Some("02".into()) }));
        assert_eq!(parse_stop(b"S02"), Some(Stop::Signal { signal: 2, thread: None }));
        assert_eq!(parse_stop(b"W00"), Some(Stop::Exited));
        assert_eq!(parse_stop(b"OK"), None);
        assert_eq!(parse_stop(b"T"), None);
    }

    #[test]
    fn reads_register_numbers_from_the_target_description() {
        let core = r#"<feature name="org.gnu.gdb.i386.core"><reg name="rax" bitsize="64" type="int64"/><reg name="rbx" bitsize="64"/></feature>"#;
        let sys = r#"<feature><!--reg name="cs_base" bitsize="64"/--><reg name="fs_base" bitsize="64" regnum="57"/><!-- x --><reg name="gs_base" bitsize="64"/></feature>"#;
        let mut next = 0;
        let mut regs = parse_regs(core, &mut next);
        regs.extend(parse_regs(sys, &mut next));
        assert_eq!(regs[1], RegDesc { name: "rbx".into(), regnum: 1, bits: 64 });
        assert_eq!(regs[3], RegDesc { name: "gs_base".into(), regnum: 58, bits: 64 });
        assert_eq!(includes(r#"<target><xi:include href="i386-64bit.xml"/></target>"#), vec!["i386-64bit.xml"]);
        assert_eq!(decode_hex(b"0aff"), Some(vec![10, 255]));
        assert_eq!(decode_hex(b"0g"), None);
    }
}
