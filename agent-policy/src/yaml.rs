//! YAML documents as trees of nodes that remember where they came from.
//!
//! serde stops at the first error, but policy authors want every problem at once, so the
//! policy validator walks this loosely typed tree instead of deserializing into structs.

use std::collections::HashMap;
use std::rc::Rc;

use serde_saphyr::granit_parser::{Event, Marker, Parser, ScalarStyle};

use crate::diagnostic::Pos;

/// Most nodes a file may expand to, counting every alias as a copy of its anchor. Bounds
/// the work of validating "billion laughs" documents.
const MAX_NODES: usize = 1_000_000;

#[derive(Debug)]
pub(crate) enum Value {
    Null,
    /// Any non-null scalar. Policy values are all text, so `123` is the string "123".
    Str(String),
    Seq(Vec<Rc<Node>>),
    Map(Vec<(Rc<Node>, Rc<Node>)>),
}

#[derive(Debug)]
pub(crate) struct Node {
    pub pos: Pos,
    pub value: Value,
    /// Nodes in this subtree, aliases expanded.
    size: usize,
    /// A collection a syntax error cut short: its type and length say nothing.
    pub incomplete: bool,
}

impl Node {
    /// How the node's type is named in "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "nothing (null)",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// A YAML problem that stopped parsing the rest of the file.
#[derive(Debug)]
pub(crate) struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// The documents of a file.
pub(crate) struct Documents {
    /// Complete documents, in order, empty ones left out.
    pub complete: Vec<Rc<Node>>,
    /// What was read of the document a syntax error cut short: its problems are worth
    /// reporting too, but missing keys may just lie beyond the error.
    pub partial: Option<Rc<Node>>,
    pub error: Option<SyntaxError>,
}

pub(crate) fn parse_documents(text: &str) -> Documents {
    let mut builder = Builder::default();
    for item in Parser::new_from_str(text) {
        let step = match item {
            Ok((event, span)) => builder.event(event, pos(&span.start)),
            Err(e) => Err(SyntaxError {
                pos: pos(e.marker()),
                message: format!(
                    "YAML syntax error: {}{}",
                    e.info(),
                    alias_hint(text, e.marker())
                ),
            }),
        };
        if let Err(e) = step {
            let partial = builder.finish_partial();
            return Documents {
                complete: builder.documents,
                partial,
                error: Some(e),
            };
        }
    }
    Documents {
        complete: builder.documents,
        partial: None,
        error: None,
    }
}

/// A plain value starting with `*` reads as an alias, which is what an unquoted host name
/// wildcard becomes; say so where the error points at one.
fn alias_hint(text: &str, marker: &Marker) -> &'static str {
    if text.chars().nth(marker.index()) == Some('*') {
        " (a value starting with `*` is a YAML alias: quote host name wildcards, as in \
         \"*.example.com:443\")"
    } else {
        ""
    }
}

fn pos(marker: &Marker) -> Pos {
    Pos {
        line: marker.line().max(1),
        column: marker.col() + 1,
    }
}

enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<Rc<Node>>,
        size: usize,
    },
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<(Rc<Node>, Rc<Node>)>,
        key: Option<Rc<Node>>,
        size: usize,
    },
}

#[derive(Default)]
struct Builder {
    documents: Vec<Rc<Node>>,
    // An explicit stack rather than recursion: nesting depth is the input's choice.
    stack: Vec<Frame>,
    anchors: HashMap<usize, Rc<Node>>,
    total: usize,
}

impl Builder {
    fn event(&mut self, event: Event<'_>, at: Pos) -> Result<(), SyntaxError> {
        match event {
            Event::DocumentStart(..) => self.anchors.clear(),
            Event::Scalar(text, style, anchor, tag) => {
                let is_null = style == ScalarStyle::Plain
                    && tag.is_none()
                    && matches!(&*text, "" | "~" | "null" | "Null" | "NULL");
                let value = if is_null {
                    Value::Null
                } else {
                    Value::Str(text.into_owned())
                };
                self.complete(
                    Node {
                        pos: at,
                        value,
                        size: 1,
                        incomplete: false,
                    },
                    anchor,
                )?;
            }
            Event::SequenceStart(_, anchor, _) => self.stack.push(Frame::Seq {
                pos: at,
                anchor,
                items: Vec::new(),
                size: 1,
            }),
            Event::MappingStart(_, anchor, _) => self.stack.push(Frame::Map {
                pos: at,
                anchor,
                entries: Vec::new(),
                key: None,
                size: 1,
            }),
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(frame) = self.stack.pop() else {
                    return Err(SyntaxError {
                        pos: at,
                        message: "YAML syntax error: unbalanced collection end".into(),
                    });
                };
                let anchor = match frame {
                    Frame::Seq { anchor, .. } | Frame::Map { anchor, .. } => anchor,
                };
                self.complete(frame_node(frame), anchor)?;
            }
            Event::Alias(id) => {
                let Some(node) = self.anchors.get(&id).cloned() else {
                    return Err(SyntaxError {
                        pos: at,
                        message: "YAML syntax error: alias to an unknown anchor".into(),
                    });
                };
                self.attach(node)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Close every open collection and return the document they form, if any.
    fn finish_partial(&mut self) -> Option<Rc<Node>> {
        let mut done = None;
        while let Some(frame) = self.stack.pop() {
            let mut node = frame_node(frame);
            node.incomplete = true;
            match self.stack.last_mut() {
                None => done = Some(Rc::new(node)),
                Some(Frame::Seq { items, .. }) => items.push(Rc::new(node)),
                Some(Frame::Map { entries, key, .. }) => {
                    // A key whose value never came is dropped.
                    if let Some(k) = key.take() {
                        entries.push((k, Rc::new(node)));
                    }
                }
            }
        }
        done
    }

    fn complete(&mut self, node: Node, anchor: usize) -> Result<(), SyntaxError> {
        let node = Rc::new(node);
        if anchor != 0 {
            self.anchors.insert(anchor, Rc::clone(&node));
        }
        self.attach(node)
    }

    /// Hang a finished node on its parent, or make it a document.
    fn attach(&mut self, node: Rc<Node>) -> Result<(), SyntaxError> {
        self.total = self.total.saturating_add(node.size);
        if self.total > MAX_NODES {
            return Err(SyntaxError {
                pos: node.pos,
                message: format!(
                    "document too large: more than {MAX_NODES} YAML nodes once aliases are expanded"
                ),
            });
        }
        match self.stack.last_mut() {
            None => {
                if !matches!(node.value, Value::Null) {
                    self.documents.push(node);
                }
            }
            Some(Frame::Seq { items, size, .. }) => {
                *size = size.saturating_add(node.size);
                items.push(node);
            }
            Some(Frame::Map {
                entries, key, size, ..
            }) => {
                *size = size.saturating_add(node.size);
                match key.take() {
                    None => *key = Some(node),
                    Some(k) => entries.push((k, node)),
                }
            }
        }
        Ok(())
    }
}

fn frame_node(frame: Frame) -> Node {
    match frame {
        Frame::Seq {
            pos, items, size, ..
        } => Node {
            pos,
            value: Value::Seq(items),
            size,
            incomplete: false,
        },
        Frame::Map {
            pos, entries, size, ..
        } => Node {
            pos,
            value: Value::Map(entries),
            size,
            incomplete: false,
        },
    }
}
