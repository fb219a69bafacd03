//! Target descriptions: the `target.xml` a stub serves through
//! `qXfer:features:read`, with its `xi:include`d feature files, reduced to
//! the list of registers (name, number, size) that fixes the layout of the
//! `g` block and the numbers `p`/`P` take.
//!
//! The documents are small and machine-written, so a tag scanner does: it
//! skips comments (QEMU's `i386-64bit.xml` comments registers *out*),
//! processing instructions and the DOCTYPE, and reads attributes. A general
//! XML parser would reject QEMU's `target.xml`, which uses the `xi:` prefix
//! without declaring its namespace.

use std::collections::HashMap;

/// Why a target description could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    /// A comment, tag or quoted value never ends.
    #[error("{document}: unterminated {what} starting at byte {at}")]
    Unterminated {
        /// Document name.
        document: String,
        /// What was open.
        what: &'static str,
        /// Byte offset where it began.
        at: usize,
    },
    /// An attribute is not `name="value"`.
    #[error("{document}: malformed attribute in <{tag}> at byte {at}")]
    BadAttribute {
        /// Document name.
        document: String,
        /// The element.
        tag: String,
        /// Byte offset.
        at: usize,
    },
    /// A `<reg>` lacks a required attribute.
    #[error("{document}: <reg> at byte {at} has no `{attribute}`")]
    MissingAttribute {
        /// Document name.
        document: String,
        /// The attribute.
        attribute: &'static str,
        /// Byte offset.
        at: usize,
    },
    /// A numeric attribute is not a decimal number.
    #[error("{document}: `{attribute}=\"{value}\"` is not a number")]
    BadNumber {
        /// Document name.
        document: String,
        /// The attribute.
        attribute: &'static str,
        /// Its value.
        value: String,
    },
    /// A document includes one that was not supplied.
    #[error("{document}: includes `{href}`, which was not fetched")]
    MissingInclude {
        /// The including document.
        document: String,
        /// The included name.
        href: String,
    },
    /// Includes nest too deeply or form a cycle.
    #[error("{document}: includes nest deeper than {limit} (a cycle?)")]
    IncludeDepth {
        /// The document where the limit was hit.
        document: String,
        /// The limit.
        limit: usize,
    },
    /// No register at all was described.
    #[error("{document}: the description names no registers")]
    NoRegisters {
        /// The root document.
        document: String,
    },
}

/// How deeply `xi:include` may nest.
pub const MAX_INCLUDE_DEPTH: usize = 8;

/// One register of the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterDesc {
    /// Name (`rip`, `eflags`, `cr3`, `xmm0`...).
    pub name: String,
    /// Number used by `p`/`P` and for the order in the `g` block.
    pub regnum: u32,
    /// Width in bits.
    pub bitsize: u32,
    /// The `type` attribute (`int64`, `code_ptr`, `i387_ext`, `vec128`...).
    pub kind: String,
    /// The `group` attribute, when given (`float`, `vector`).
    pub group: Option<String>,
    /// The feature it belongs to (`org.gnu.gdb.i386.core`...).
    pub feature: Option<String>,
}

/// What one XML document says, in document order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetItem {
    /// `<architecture>` text.
    Architecture(String),
    /// `<feature name=...>` begins.
    Feature(String),
    /// `<reg>`, with its explicit `regnum` if any.
    Reg {
        /// Name.
        name: String,
        /// Explicit number.
        regnum: Option<u32>,
        /// Width in bits.
        bitsize: u32,
        /// `type`.
        kind: String,
        /// `group`.
        group: Option<String>,
    },
    /// `<xi:include href=...>`.
    Include(String),
}

/// One parsed document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// Its name (`target.xml`, `i386-64bit.xml`).
    pub name: String,
    /// Its items in order.
    pub items: Vec<TargetItem>,
}

impl Document {
    /// The documents it includes, in order.
    pub fn includes(&self) -> impl Iterator<Item = &str> {
        self.items.iter().filter_map(|i| match i {
            TargetItem::Include(href) => Some(href.as_str()),
            _ => None,
        })
    }
}

/// A whole target description with includes expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetDescription {
    /// `<architecture>` (`i386:x86-64`), when given.
    pub architecture: Option<String>,
    /// Registers in document order.
    pub registers: Vec<RegisterDesc>,
}

impl TargetDescription {
    /// Expands `root` and its includes from `docs` (name to parsed
    /// document) and numbers the registers as GDB does: in document order,
    /// an explicit `regnum` resetting the count for the registers after it.
    pub fn assemble(root: &str, docs: &HashMap<String, Document>) -> Result<TargetDescription, XmlError> {
        let mut out = TargetDescription { architecture: None, registers: Vec::new() };
        let mut next = 0u32;
        expand(root, root, docs, 0, None, &mut next, &mut out)?;
        if out.registers.is_empty() {
            return Err(XmlError::NoRegisters { document: root.to_string() });
        }
        Ok(out)
    }

    /// A register by name.
    pub fn register(&self, name: &str) -> Option<&RegisterDesc> {
        self.registers.iter().find(|r| r.name == name)
    }

    /// The general-purpose x86-64 block QEMU's `g` packet starts with, for a
    /// stub that serves no description.
    pub fn x86_64_core() -> TargetDescription {
        let mut registers = Vec::new();
        let names64 = [
            "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13", "r14",
            "r15",
        ];
        let all = names64
            .iter()
            .map(|n| (*n, 64))
            .chain([("rip", 64), ("eflags", 32)])
            .chain(["cs", "ss", "ds", "es", "fs", "gs"].iter().map(|n| (*n, 32)));
        for (regnum, (name, bitsize)) in all.enumerate() {
            registers.push(RegisterDesc {
                name: name.to_string(),
                regnum: regnum as u32,
                bitsize,
                kind: "int".into(),
                group: None,
                feature: Some("org.gnu.gdb.i386.core".into()),
            });
        }
        TargetDescription { architecture: Some("i386:x86-64".into()), registers }
    }
}

fn expand(
    name: &str,
    root: &str,
    docs: &HashMap<String, Document>,
    depth: usize,
    feature: Option<String>,
    next: &mut u32,
    out: &mut TargetDescription,
) -> Result<(), XmlError> {
    if depth > MAX_INCLUDE_DEPTH {
        return Err(XmlError::IncludeDepth { document: name.to_string(), limit: MAX_INCLUDE_DEPTH });
    }
    let doc = docs.get(name).ok_or_else(|| XmlError::MissingInclude {
        document: if depth == 0 { root.to_string() } else { "an included document".to_string() },
        href: name.to_string(),
    })?;
    let mut feature = feature;
    for item in &doc.items {
        match item {
            TargetItem::Architecture(a) => out.architecture = Some(a.clone()),
            TargetItem::Feature(f) => feature = Some(f.clone()),
            TargetItem::Reg { name, regnum, bitsize, kind, group } => {
                let n = regnum.unwrap_or(*next);
                *next = n.saturating_add(1);
                out.registers.push(RegisterDesc {
                    name: name.clone(),
                    regnum: n,
                    bitsize: *bitsize,
                    kind: kind.clone(),
                    group: group.clone(),
                    feature: feature.clone(),
                });
            }
            TargetItem::Include(href) => {
                if !docs.contains_key(href) {
                    return Err(XmlError::MissingInclude { document: doc.name.clone(), href: href.clone() });
                }
                expand(href, root, docs, depth + 1, feature.clone(), next, out)?;
            }
        }
    }
    Ok(())
}

/// One start or empty-element tag.
struct Tag<'a> {
    name: &'a str,
    attrs: Vec<(&'a str, String)>,
    at: usize,
    end: usize,
}

impl Tag<'_> {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }
}

fn unescape(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&apos;", "'").replace("&amp;", "&")
}

/// Parses one document.
pub fn parse_document(name: &str, text: &str) -> Result<Document, XmlError> {
    let unterminated = |what, at| XmlError::Unterminated { document: name.to_string(), what, at };
    let mut items = Vec::new();
    let mut pos = 0;
    while let Some(off) = text[pos..].find('<') {
        let at = pos + off;
        let rest = &text[at..];
        if rest.starts_with("<!--") {
            let end = rest.find("-->").ok_or_else(|| unterminated("comment", at))?;
            pos = at + end + 3;
        } else if rest.starts_with("<?") {
            let end = rest.find("?>").ok_or_else(|| unterminated("processing instruction", at))?;
            pos = at + end + 2;
        } else if rest.starts_with("<!") {
            // DOCTYPE, possibly with an internal subset in brackets.
            let close = match (rest.find('['), rest.find('>')) {
                (Some(open), Some(gt)) if open < gt => rest[open..].find("]>").map(|e| open + e + 1),
                (_, gt) => gt,
            };
            pos = at + close.ok_or_else(|| unterminated("declaration", at))? + 1;
        } else if rest.starts_with("</") {
            let end = rest.find('>').ok_or_else(|| unterminated("end tag", at))?;
            pos = at + end + 1;
        } else {
            let tag = scan_tag(name, text, at)?;
            pos = tag.end;
            match tag.name {
                "architecture" => {
                    let body = &text[pos..];
                    let end = body.find('<').ok_or_else(|| unterminated("<architecture>", at))?;
                    items.push(TargetItem::Architecture(unescape(body[..end].trim())));
                }
                "feature" => items.push(TargetItem::Feature(tag.attr("name").unwrap_or_default().to_string())),
                "xi:include" | "include" => {
                    if let Some(href) = tag.attr("href") {
                        items.push(TargetItem::Include(href.to_string()));
                    }
                }
                "reg" => items.push(reg_item(name, &tag)?),
                _ => {}
            }
        }
    }
    Ok(Document { name: name.to_string(), items })
}

fn reg_item(doc: &str, tag: &Tag<'_>) -> Result<TargetItem, XmlError> {
    let missing = |attribute| XmlError::MissingAttribute { document: doc.to_string(), attribute, at: tag.at };
    let number = |attribute: &'static str, value: &str| {
        value.trim().parse::<u32>().map_err(|_| XmlError::BadNumber {
            document: doc.to_string(),
            attribute,
            value: value.to_string(),
        })
    };
    let name = tag.attr("name").ok_or_else(|| missing("name"))?.to_string();
    let bitsize = number("bitsize", tag.attr("bitsize").ok_or_else(|| missing("bitsize"))?)?;
    let regnum = tag.attr("regnum").map(|v| number("regnum", v)).transpose()?;
    let kind = tag.attr("type").unwrap_or("int").to_string();
    let group = tag.attr("group").map(str::to_string);
    Ok(TargetItem::Reg { name, regnum, bitsize, kind, group })
}

fn scan_tag<'a>(doc: &str, text: &'a str, at: usize) -> Result<Tag<'a>, XmlError> {
    let bytes = text.as_bytes();
    let is_name = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-' | b'.');
    let mut i = at + 1;
    let start = i;
    while i < bytes.len() && is_name(bytes[i]) {
        i += 1;
    }
    let name = &text[start..i];
    let bad = |at| XmlError::BadAttribute { document: doc.to_string(), tag: name.to_string(), at };
    let mut attrs = Vec::new();
    loop {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        match bytes.get(i) {
            None => return Err(XmlError::Unterminated { document: doc.to_string(), what: "tag", at }),
            Some(b'>') => return Ok(Tag { name, attrs, at, end: i + 1 }),
            Some(b'/') if bytes.get(i + 1) == Some(&b'>') => return Ok(Tag { name, attrs, at, end: i + 2 }),
            Some(&b) if is_name(b) => {
                let key_start = i;
                while i < bytes.len() && is_name(bytes[i]) {
                    i += 1;
                }
                let key = &text[key_start..i];
                while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                    i += 1;
                }
                if bytes.get(i) != Some(&b'=') {
                    return Err(bad(i));
                }
                i += 1;
                while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                    i += 1;
                }
                let quote = match bytes.get(i) {
                    Some(&q @ (b'"' | b'\'')) => q,
                    _ => return Err(bad(i)),
                };
                let value_start = i + 1;
                let len = bytes[value_start..].iter().position(|&b| b == quote).ok_or(XmlError::Unterminated {
                    document: doc.to_string(),
                    what: "attribute value",
                    at: i,
                })?;
                attrs.push((key, unescape(&text[value_start..value_start + len])));
                i = value_start + len + 1;
            }
            Some(_) => return Err(bad(i)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const QEMU_TARGET: &str = r#"<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd"><target><architecture>i386:x86-64</architecture><xi:include href="i386-64bit.xml"/></target>"#;
    const QEMU_CORE: &str = include_str!("testdata/i386-64bit.xml");

    fn qemu() -> TargetDescription {
        let mut docs = HashMap::new();
        for (name, text) in [("target.xml", QEMU_TARGET), ("i386-64bit.xml", QEMU_CORE)] {
            docs.insert(name.to_string(), parse_document(name, text).unwrap());
        }
        TargetDescription::assemble("target.xml", &docs).unwrap()
    }

    #[test]
    fn qemu_7_2_x86_64_description() {
        let desc = qemu();
        assert_eq!(desc.architecture.as_deref(), Some("i386:x86-64"));
        let names: Vec<&str> = desc.registers.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            &names[..18],
            [
                "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13", "r14",
                "r15", "rip", "eflags"
            ]
        );
        // cs_base..es_base are commented out in QEMU's file: fs_base follows gs.
        assert_eq!(&names[18..27], ["cs", "ss", "ds", "es", "fs", "gs", "fs_base", "gs_base", "k_gs_base"]);
        assert_eq!(desc.register("rip").unwrap().regnum, 16);
        assert_eq!(desc.register("eflags").unwrap().bitsize, 32);
        assert_eq!(desc.register("cr3").unwrap().regnum, 29);
        assert_eq!(desc.register("st0").unwrap().bitsize, 80);
        assert_eq!(desc.register("mxcsr").unwrap().regnum, 65);
        assert_eq!(desc.registers.len(), 66);
        assert_eq!(desc.register("fctrl").unwrap().group.as_deref(), Some("float"));
        assert_eq!(desc.register("rax").unwrap().feature.as_deref(), Some("org.gnu.gdb.i386.core"));
        // QEMU's g block is 608 bytes: the sum of all widths.
        assert_eq!(desc.registers.iter().map(|r| r.bitsize / 8).sum::<u32>(), 608);
    }

    #[test]
    fn explicit_regnums_restart_the_count() {
        let doc = parse_document(
            "t.xml",
            "<target><feature name='f'><reg name='a' bitsize='64'/><reg name=\"b\" bitsize=\"32\" regnum=\"40\"/><reg name='c' bitsize='8'/></feature></target>",
        )
        .unwrap();
        let desc = TargetDescription::assemble("t.xml", &HashMap::from([("t.xml".to_string(), doc)])).unwrap();
        let nums: Vec<(String, u32)> = desc.registers.iter().map(|r| (r.name.clone(), r.regnum)).collect();
        assert_eq!(nums, [("a".into(), 0), ("b".into(), 40), ("c".into(), 41)]);
    }

    #[test]
    fn errors_name_document_and_cause() {
        let err = parse_document("x.xml", "<reg name='a'/>").unwrap_err();
        assert_eq!(err.to_string(), "x.xml: <reg> at byte 0 has no `bitsize`");
        assert!(matches!(parse_document("x.xml", "<!-- open"), Err(XmlError::Unterminated { what: "comment", .. })));
        assert!(matches!(parse_document("x.xml", "<reg bitsize=64>"), Err(XmlError::BadAttribute { .. })));
        let root = parse_document("t.xml", "<target><xi:include href='gone.xml'/></target>").unwrap();
        let err = TargetDescription::assemble("t.xml", &HashMap::from([("t.xml".into(), root)])).unwrap_err();
        assert_eq!(err.to_string(), "t.xml: includes `gone.xml`, which was not fetched");
        let cyc = parse_document("c.xml", "<xi:include href='c.xml'/>").unwrap();
        let err = TargetDescription::assemble("c.xml", &HashMap::from([("c.xml".into(), cyc)])).unwrap_err();
        assert!(matches!(err, XmlError::IncludeDepth { .. }));
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
            let _ = parse_document("fuzz.xml", &text);
        }

        #[test]
        fn tag_soup_never_panics(
            parts in proptest::collection::vec(
                prop::sample::select(vec!["<", ">", "/", "<!--", "-->", "<?", "?>", "<!DOCTYPE", "[", "]", "reg", " name='x'",
                    " bitsize=\"64\"", " regnum='3'", "=", "'", "\"", "xi:include", " href='a'", "&amp;", " "]),
                0..60)
        ) {
            let text: String = parts.concat();
            if let Ok(doc) = parse_document("soup.xml", &text) {
                let _ = TargetDescription::assemble("soup.xml", &HashMap::from([("soup.xml".to_string(), doc)]));
            }
        }
    }
}
