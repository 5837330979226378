//! What a YAML document may cost before serde_yaml turns it into a tree.
//!
//! Two shapes of hostile `gateway.yaml` cost far more than their size (issue 12, defects 14
//! and 15), and a SIGHUP reload parses whatever file is on disk:
//!
//! * **Alias amplification** ("billion laughs"): `x: &a [1, ... 20 000 items]` then
//!   `y: [*a, ... 20 000 times]` is 100 KB of text that serde_yaml expands into 400 million
//!   values (it follows aliases by replaying the anchor's events; its own repetition limit
//!   counts alias *uses*, not what they expand to).
//! * **Deep flow nesting**: `[[[[...]]]]`. libyaml's scanner walks its stack of possible
//!   simple keys, one per open flow collection, for every token it reads, so 200 KB of
//!   brackets costs O(n²) (minutes) before serde_yaml's own recursion limit (128) is reached:
//!   serde_yaml reads the whole event stream before it looks at any of it.
//!
//! [`check`] walks libyaml's event stream itself and stops at the first event past a limit,
//! so the parser never gets further than the scanner's bounded lookahead (a possible simple
//! key goes stale after 1024 characters) beyond that point. A document that is not valid YAML
//! passes here: serde_yaml then reports the syntax error with its usual message.
//!
//! The event loop needs libyaml's C-style API (`unsafe-libyaml`, the very parser serde_yaml
//! runs, so both agree on what the text means); the unsafe code is confined to [`Parser`].
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::CStr;
use std::mem::MaybeUninit;

/// Deepest nesting of mappings and lists (aliases counted where they are used). The deepest
/// key path of a gateway.yaml is 5 levels (`routes[i].require_claims.<claim>[j]`); 64 leaves
/// room for anything plausible and keeps libyaml's per-token cost (one step per open flow
/// collection) small.
pub const MAX_DEPTH: usize = 64;

/// Largest total size that aliases may expand to, in nodes plus scalar bytes. A config uses
/// aliases to share a few small blocks (a default upstream, a list of audiences); 100 000
/// units is a few MB of tree at most, where a 100 KB amplification bomb would be gigabytes.
pub const MAX_ALIAS_EXPANSION: u64 = 100_000;

/// Why a document was refused before parsing: a message and the 1-based line of the event
/// that went past the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub line: usize,
    pub message: String,
}

/// Checks nesting depth and alias expansion of every document in `text`.
pub fn check(text: &str) -> Result<(), Refusal> {
    let mut parser = Parser::new(text.as_bytes());
    let mut walk = Walk::default();
    // A syntax error ends the walk quietly: serde_yaml reports it.
    while let Some((event, line)) = parser.next() {
        match walk.event(event) {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(message) => return Err(Refusal { line, message }),
        }
    }
    Ok(())
}

/// One event, with what the limits need of it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    /// A mapping or sequence begins, maybe anchored.
    Open {
        anchor: Option<Vec<u8>>,
    },
    Close,
    Scalar {
        anchor: Option<Vec<u8>>,
        len: u64,
    },
    Alias {
        anchor: Vec<u8>,
    },
    /// A document begins: anchors of earlier documents are out of scope.
    DocumentStart,
    /// Stream start, document end.
    Other,
    StreamEnd,
}

/// An open mapping or sequence.
struct Frame {
    /// Its expanded size so far (itself, entries, scalar bytes, aliases as expanded).
    size: u64,
    /// Deepest nesting below it, counting aliases as expanded (0: only scalars).
    height: usize,
    /// The anchor id it defines, if any.
    anchor: Option<usize>,
}

/// The state of the walk over the events.
#[derive(Default)]
struct Walk {
    stack: Vec<Frame>,
    /// Anchor name -> id of its latest definition (a later `&a` replaces an earlier one, as
    /// in serde_yaml, which also registers an anchor where its node begins).
    anchors: HashMap<Vec<u8>, usize>,
    /// Per anchor id: (expanded size, height) once its node is complete; `None` while open.
    defined: Vec<Option<(u64, usize)>>,
    /// Total size produced by aliases so far.
    expanded: u64,
}

impl Walk {
    /// Accounts for one event; `Ok(false)` at the end of the stream.
    fn event(&mut self, event: Event) -> Result<bool, String> {
        match event {
            Event::StreamEnd => return Ok(false),
            Event::Other => {}
            Event::DocumentStart => self.anchors.clear(),
            Event::Open { anchor } => {
                if self.stack.len() >= MAX_DEPTH {
                    return Err(format!(
                        "mappings and lists nested deeper than {MAX_DEPTH} levels; refused \
                         (a config needs a handful)"
                    ));
                }
                let anchor = anchor.map(|name| self.define(name));
                self.stack.push(Frame {
                    size: 1,
                    height: 1,
                    anchor,
                });
            }
            Event::Close => {
                if let Some(frame) = self.stack.pop() {
                    if let Some(id) = frame.anchor {
                        self.defined[id] = Some((frame.size, frame.height));
                    }
                    self.add(frame.size, frame.height);
                }
            }
            Event::Scalar { anchor, len } => {
                let size = len.saturating_add(1);
                if let Some(name) = anchor {
                    let id = self.define(name);
                    self.defined[id] = Some((size, 0));
                }
                self.add(size, 0);
            }
            Event::Alias { anchor } => {
                // An unknown anchor is serde_yaml's error to report.
                let Some(&id) = self.anchors.get(&anchor) else {
                    return Ok(true);
                };
                let name = String::from_utf8_lossy(&anchor);
                let Some((size, height)) = self.defined[id] else {
                    return Err(format!(
                        "alias *{name} is used inside the node it names (a recursive alias); \
                         refused"
                    ));
                };
                if self.stack.len() + height > MAX_DEPTH {
                    return Err(format!(
                        "alias *{name} nests mappings and lists deeper than {MAX_DEPTH} levels; \
                         refused"
                    ));
                }
                self.expanded = self.expanded.saturating_add(size);
                if self.expanded > MAX_ALIAS_EXPANSION {
                    return Err(format!(
                        "aliases (*{name} and others) expand to more than {MAX_ALIAS_EXPANSION} \
                         nodes and bytes; refused (YAML alias amplification)"
                    ));
                }
                self.add(size, height);
            }
        }
        Ok(true)
    }

    fn define(&mut self, name: Vec<u8>) -> usize {
        let id = self.defined.len();
        self.defined.push(None);
        self.anchors.insert(name, id);
        id
    }

    /// Adds a finished child to the innermost open collection.
    fn add(&mut self, size: u64, height: usize) {
        if let Some(parent) = self.stack.last_mut() {
            parent.size = parent.size.saturating_add(size);
            parent.height = parent.height.max(height + 1);
        }
    }
}

/// libyaml's event parser over a borrowed text.
///
/// Invariants: `raw` comes from `Box::into_raw` and is initialized by
/// `yaml_parser_initialize`; the parser keeps a pointer to itself (its string reader's
/// handler data), hence the heap allocation that never moves and the raw pointer (no `&mut`
/// to it is ever created), and pointers into `input`, which outlives it (`'a`).
struct Parser<'a> {
    raw: *mut unsafe_libyaml::yaml_parser_t,
    _input: &'a [u8],
    done: bool,
}

impl<'a> Parser<'a> {
    fn new(input: &'a [u8]) -> Parser<'a> {
        let raw = Box::into_raw(Box::new(
            MaybeUninit::<unsafe_libyaml::yaml_parser_t>::uninit(),
        ))
        .cast::<unsafe_libyaml::yaml_parser_t>();
        // SAFETY: `raw` is a valid, exclusively owned allocation of the right size;
        // initialize zeroes it before anything reads it. On failure (allocation) the parser
        // is left zeroed, which delete accepts, and `done` stops any use.
        let ok = unsafe { unsafe_libyaml::yaml_parser_initialize(raw).ok };
        if ok {
            // SAFETY: initialized above; `input` outlives the parser (field `_input`).
            unsafe {
                unsafe_libyaml::yaml_parser_set_encoding(raw, unsafe_libyaml::YAML_UTF8_ENCODING);
                unsafe_libyaml::yaml_parser_set_input_string(raw, input.as_ptr(), input.len() as _);
            }
        }
        Parser {
            raw,
            _input: input,
            done: !ok,
        }
    }

    /// The next event and its 1-based line; `None` after the end or at a syntax error.
    fn next(&mut self) -> Option<(Event, usize)> {
        if self.done {
            return None;
        }
        let mut event = MaybeUninit::<unsafe_libyaml::yaml_event_t>::uninit();
        // SAFETY: the parser is initialized with live input (see `new`); `yaml_parser_parse`
        // fully writes `event` when it succeeds, and only then is it read and deleted.
        unsafe {
            // After a failure `done` is set: libyaml is never asked again.
            if unsafe_libyaml::yaml_parser_parse(self.raw, event.as_mut_ptr()).fail {
                self.done = true;
                return None;
            }
            let event = event.as_mut_ptr();
            let line = usize::try_from((*event).start_mark.line)
                .unwrap_or(usize::MAX - 1)
                .saturating_add(1);
            let converted = convert(&*event);
            unsafe_libyaml::yaml_event_delete(event);
            if converted == Event::StreamEnd {
                self.done = true;
            }
            Some((converted, line))
        }
    }
}

impl Drop for Parser<'_> {
    fn drop(&mut self) {
        // SAFETY: `raw` came from `Box::into_raw` in `new` and is freed exactly once, here,
        // after libyaml released what it allocated (delete accepts a zeroed parser too).
        unsafe {
            unsafe_libyaml::yaml_parser_delete(self.raw);
            drop(Box::from_raw(
                self.raw
                    .cast::<MaybeUninit<unsafe_libyaml::yaml_parser_t>>(),
            ));
        }
    }
}

/// Copies what the walk needs out of a libyaml event.
///
/// # Safety
/// `event` must be a fully initialized event returned by `yaml_parser_parse`.
unsafe fn convert(event: &unsafe_libyaml::yaml_event_t) -> Event {
    // SAFETY (all union reads): the member read is the one `type_` says is active.
    unsafe {
        match event.type_ {
            unsafe_libyaml::YAML_STREAM_END_EVENT => Event::StreamEnd,
            unsafe_libyaml::YAML_DOCUMENT_START_EVENT => Event::DocumentStart,
            unsafe_libyaml::YAML_ALIAS_EVENT => Event::Alias {
                anchor: c_bytes(event.data.alias.anchor).unwrap_or_default(),
            },
            unsafe_libyaml::YAML_SCALAR_EVENT => Event::Scalar {
                anchor: c_bytes(event.data.scalar.anchor),
                len: event.data.scalar.length,
            },
            unsafe_libyaml::YAML_SEQUENCE_START_EVENT => Event::Open {
                anchor: c_bytes(event.data.sequence_start.anchor),
            },
            unsafe_libyaml::YAML_MAPPING_START_EVENT => Event::Open {
                anchor: c_bytes(event.data.mapping_start.anchor),
            },
            unsafe_libyaml::YAML_SEQUENCE_END_EVENT | unsafe_libyaml::YAML_MAPPING_END_EVENT => {
                Event::Close
            }
            _ => Event::Other,
        }
    }
}

/// The bytes of a NUL-terminated string owned by libyaml, or `None` for a null pointer.
///
/// # Safety
/// `ptr` is null or points to a NUL-terminated string valid for the call.
unsafe fn c_bytes(ptr: *const u8) -> Option<Vec<u8>> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: non-null and NUL-terminated per the contract above.
    Some(unsafe { CStr::from_ptr(ptr.cast()) }.to_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn nested(depth: usize) -> String {
        format!("x: {}{}\n", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn ordinary_configs_pass() {
        let text =
            "server:\n  listen: 127.0.0.1:0\nroutes:\n  - prefix: /\n    upstream: app\n    \
                    require_claims: {scopes: [a, b]}\ndefaults: &d {timeout: 2s}\nother: *d\n";
        assert_eq!(check(text), Ok(()));
        assert_eq!(check(""), Ok(()));
        assert_eq!(check(&nested(MAX_DEPTH - 1)), Ok(()));
    }

    #[test]
    fn syntax_errors_are_left_to_serde_yaml() {
        assert_eq!(check("a: [b\nc: ]]]"), Ok(()));
        assert_eq!(check("a: *missing"), Ok(()));
    }

    #[test]
    fn deep_nesting_is_refused_quickly_with_its_line() {
        // The mapping `x:` is level 1: 64 brackets make level 65.
        let refused = check(&nested(MAX_DEPTH)).unwrap_err();
        assert_eq!(refused.line, 1);
        assert!(refused.message.contains("deeper than 64"), "{refused:?}");

        let started = Instant::now();
        let text = format!("a: 1\n{}", nested(1_000_000));
        let refused = check(&text).unwrap_err();
        assert_eq!(refused.line, 2);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );

        // Block nesting counts too.
        let mut block = String::new();
        for level in 0..70 {
            block.push_str(&format!("{}k{level}:\n", " ".repeat(level)));
        }
        block.push_str(&format!("{}leaf: 1\n", " ".repeat(70)));
        assert!(check(&block)
            .unwrap_err()
            .message
            .contains("deeper than 64"));
    }

    #[test]
    fn alias_amplification_is_refused_quickly() {
        let items = vec!["1"; 20_000].join(", ");
        let refs = vec!["*a"; 20_000].join(", ");
        let text = format!("x: &a [{items}]\ny: [{refs}]\n");
        let started = Instant::now();
        let refused = check(&text).unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(refused.line, 2);
        assert!(
            refused.message.contains("alias amplification"),
            "{refused:?}"
        );
    }

    #[test]
    fn nested_alias_layers_are_counted_as_expanded() {
        // Each layer multiplies by 10: a classic billion laughs in 10 lines.
        let mut text = String::from("l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..10 {
            let refs = vec![format!("*l{}", i - 1); 10].join(", ");
            text.push_str(&format!("l{i}: &l{i} [{refs}]\n"));
        }
        let refused = check(&text).unwrap_err();
        assert!(
            refused.message.contains("alias amplification"),
            "{refused:?}"
        );
        // A long scalar repeated counts by its bytes.
        let long = "x".repeat(10_000);
        let mut text = format!("s: &s {long}\nl: [");
        text.push_str(&vec!["*s"; 20].join(", "));
        text.push_str("]\n");
        assert!(check(&text).is_err());
        // Small sharing is fine.
        assert_eq!(check("a: &a {k: v}\nb: *a\nc: *a\n"), Ok(()));
    }

    #[test]
    fn recursive_and_deep_aliases_are_refused() {
        let refused = check("a: &a [1, *a]\n").unwrap_err();
        assert!(refused.message.contains("recursive"), "{refused:?}");
        // An anchor of depth 40 used at depth 40.
        let deep = format!("a: &a {}{}\n", "[".repeat(40), "]".repeat(40));
        let text = format!("{deep}b: {}*a{}\n", "[".repeat(40), "]".repeat(40));
        let refused = check(&text).unwrap_err();
        assert!(refused.message.contains("*a nests"), "{refused:?}");
    }

    #[test]
    fn anchors_belong_to_their_document() {
        let items = vec!["1"; 5_000].join(", ");
        let refs = vec!["*a"; 1_000].join(", ");
        // In the second document `*a` is unknown: serde_yaml's error, not amplification.
        let text = format!("x: &a [{items}]\n---\ny: [{refs}]\n");
        assert_eq!(check(&text), Ok(()));
    }

    #[test]
    fn a_redefined_anchor_means_its_latest_node() {
        let items = vec!["1"; 5_000].join(", ");
        // `*a` refers to the small redefinition: 1000 uses of a 2-unit scalar pass.
        let refs = vec!["*a"; 1_000].join(", ");
        let text = format!("x: &a [{items}]\nz: &a s\ny: [{refs}]\n");
        assert_eq!(check(&text), Ok(()));
    }
}
