//! A pickle machine that builds data and calls nothing.
//!
//! Every object lives once in an arena ([`Pickle::nodes`]) and is referred to by index: the
//! stack, the memo and the containers hold indices, so a memo entry reached a million times
//! costs a million indices, not a million copies, and dropping the arena is flat (no recursive
//! drop of a deep structure). The loop is iterative. Globals are resolved against the allowlist
//! of [`crate::globals`] when the pickle names them; `REDUCE`/`NEWOBJ` on an accepted global
//! build data (a dict, a tuple, a validated tensor reference, an inert record) and never run
//! anything. Protocols 0–5 are read, except the opcodes that exist only to call code or fetch
//! out-of-band data (`INST`, `OBJ`, `EXT*`, `*_BUFFER`), which are refused.

use std::collections::HashMap;

use crate::globals::{Global, StorageType};
use crate::limits::{Limit, Limits};

/// Index of a node in the arena.
pub(crate) type Id = u32;

/// A storage named by a persistent id `('storage', torch.<X>Storage, key, location, numel)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StorageRef {
    pub key: String,
    pub ty: StorageType,
    pub numel: u64,
}

/// A tensor whose rebuild arguments have been checked against its storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TensorRef {
    pub storage: StorageRef,
    pub offset: u64,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

#[derive(Clone, Debug)]
pub(crate) enum Node {
    None,
    Bool(bool),
    Int(i64),
    /// An integer outside i64 (only its existence matters: it is never a valid size).
    BigInt,
    /// Floats and byte strings are kept as markers: nothing reads their values.
    Float,
    Str(String),
    Bytes,
    List(Vec<Id>),
    Tuple(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Set(Vec<Id>),
    Global(Global),
    /// An instance of an accepted data class, kept as a record.
    Record,
    Storage(StorageRef),
    Tensor(TensorRef),
}

/// Why unpickling stopped; the caller adds the file name.
#[derive(Debug)]
pub(crate) enum Fault {
    Malformed {
        offset: u64,
        message: String,
    },
    Refused {
        offset: u64,
        global: String,
    },
    Limit {
        offset: u64,
        what: Limit,
        value: u64,
        limit: u64,
    },
}

type R<T> = std::result::Result<T, Fault>;

/// The result of one pickle: its arena and the index of the object it returned.
pub(crate) struct Pickle {
    pub nodes: Vec<Node>,
    pub root: Id,
}

impl Pickle {
    pub fn node(&self, id: Id) -> &Node {
        &self.nodes[id as usize]
    }
}

/// Unpickles one stream starting at `data[start]`; returns the pickle and the offset just past
/// its STOP. `base` is added to offsets in messages (the stream's position in the file).
pub(crate) fn unpickle(
    data: &[u8],
    start: usize,
    base: u64,
    limits: &Limits,
) -> R<(Pickle, usize)> {
    let mut m = Machine {
        data,
        pos: start,
        op_pos: start,
        start,
        base,
        limits,
        nodes: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        cells: 0,
    };
    let root = m.run()?;
    Ok((
        Pickle {
            nodes: m.nodes,
            root,
        },
        m.pos,
    ))
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    /// Start of the opcode being executed (for messages).
    op_pos: usize,
    start: usize,
    base: u64,
    limits: &'a Limits,
    nodes: Vec<Node>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u32, Id>,
    cells: u64,
}

impl Machine<'_> {
    fn offset(&self) -> u64 {
        self.base + self.op_pos as u64
    }

    fn bad<T>(&self, message: impl Into<String>) -> R<T> {
        Err(Fault::Malformed {
            offset: self.offset(),
            message: message.into(),
        })
    }

    fn limit(&self, what: Limit, value: u64, limit: u64) -> R<()> {
        if value > limit {
            return Err(Fault::Limit {
                offset: self.offset(),
                what,
                value,
                limit,
            });
        }
        Ok(())
    }

    /// Counts `n` new cells (objects or container elements) against the limit.
    fn grow(&mut self, n: usize) -> R<()> {
        self.cells += n as u64;
        self.limit(Limit::Cells, self.cells, self.limits.max_cells)
    }

    fn take(&mut self, n: u64) -> R<&[u8]> {
        let avail = (self.data.len() - self.pos) as u64;
        if n > avail {
            return self.bad(format!(
                "truncated: an operand of {n} bytes, {avail} bytes left"
            ));
        }
        let s = &self.data[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn u8(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> R<[u8; N]> {
        let mut b = [0u8; N];
        b.copy_from_slice(self.take(N as u64)?);
        Ok(b)
    }

    /// A newline-terminated text operand (protocol 0), at most 4 KiB.
    fn line(&mut self) -> R<String> {
        const MAX_LINE: usize = 4096;
        let data = self.data;
        let rest = &data[self.pos..];
        let Some(n) = rest.iter().take(MAX_LINE + 1).position(|&b| b == b'\n') else {
            return self.bad("a text operand without its newline (or longer than 4 KiB)");
        };
        let text = std::str::from_utf8(&rest[..n])
            .map(str::to_string)
            .or_else(|_| self.bad("a text operand that is not UTF-8"))?;
        self.pos += n + 1;
        Ok(text)
    }

    fn push(&mut self, node: Node) -> R<()> {
        self.grow(1)?;
        let id = self.nodes.len() as Id;
        self.nodes.push(node);
        self.stack.push(id);
        Ok(())
    }

    fn pop(&mut self) -> R<Id> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return self.bad("stack underflow");
        }
        Ok(self.stack.pop().expect("checked above"))
    }

    fn top(&self) -> R<Id> {
        match self.stack.last() {
            Some(&id) if self.stack.len() > self.marks.last().copied().unwrap_or(0) => Ok(id),
            _ => self.bad("stack underflow"),
        }
    }

    /// Pops everything above the innermost MARK, and the MARK.
    fn pop_mark(&mut self) -> R<Vec<Id>> {
        let Some(mark) = self.marks.pop() else {
            return self.bad("no MARK to pop to");
        };
        Ok(self.stack.split_off(mark))
    }

    fn memo_put(&mut self, key: u32) -> R<()> {
        let id = self.top()?;
        if !self.memo.contains_key(&key) {
            self.limit(
                Limit::Memo,
                self.memo.len() as u64 + 1,
                self.limits.max_memo,
            )?;
        }
        self.memo.insert(key, id);
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> R<()> {
        match self.memo.get(&key) {
            Some(&id) => {
                self.grow(1)?;
                self.stack.push(id);
                Ok(())
            }
            None => self.bad(format!("memo key {key} was never stored")),
        }
    }

    fn string(&mut self, n: u64) -> R<()> {
        let b = self.take(n)?.to_vec();
        match String::from_utf8(b) {
            Ok(s) => self.push(Node::Str(s)),
            Err(_) => self.bad("a unicode string that is not UTF-8"),
        }
    }

    /// Protocol-2 byte strings (`BINSTRING`): text when UTF-8, bytes otherwise.
    fn byte_string(&mut self, n: u64) -> R<()> {
        let b = self.take(n)?.to_vec();
        match String::from_utf8(b) {
            Ok(s) => self.push(Node::Str(s)),
            Err(_) => self.push(Node::Bytes),
        }
    }

    fn bytes(&mut self, n: u64) -> R<()> {
        self.take(n)?;
        self.push(Node::Bytes)
    }

    fn long(&mut self, n: u64) -> R<()> {
        let b = self.take(n)?;
        let node = if b.is_empty() {
            Node::Int(0)
        } else if b.len() <= 8 {
            // Little-endian two's complement, sign-extended.
            let neg = b[b.len() - 1] & 0x80 != 0;
            let mut buf = [if neg { 0xff } else { 0 }; 8];
            buf[..b.len()].copy_from_slice(b);
            Node::Int(i64::from_le_bytes(buf))
        } else {
            Node::BigInt
        };
        self.push(node)
    }

    /// `LONG1`/`LONG4` lengths and other counts: a negative 32-bit count is malformed.
    fn count_i32(&mut self) -> R<u64> {
        let n = i32::from_le_bytes(self.le()?);
        u64::try_from(n).or_else(|_| self.bad(format!("negative length {n}")))
    }

    fn container_extend(&mut self, target: Id, items: Vec<Id>) -> R<()> {
        self.grow(items.len())?;
        match &mut self.nodes[target as usize] {
            Node::List(v) | Node::Set(v) => {
                v.extend(items);
                Ok(())
            }
            _ => self.bad("APPEND/ADDITEMS on something that is not a list or set"),
        }
    }

    fn dict_extend(&mut self, target: Id, items: Vec<Id>) -> R<()> {
        if !items.len().is_multiple_of(2) {
            return self.bad("SETITEMS with an odd number of items");
        }
        self.grow(items.len() / 2)?;
        let pairs = items.chunks(2).map(|p| (p[0], p[1]));
        match &mut self.nodes[target as usize] {
            Node::Dict(d) => {
                d.extend(pairs);
                Ok(())
            }
            _ => self.bad("SETITEM(S) on something that is not a dict"),
        }
    }

    fn global(&mut self, module: &str, name: &str) -> R<()> {
        match Global::resolve(module, name) {
            Some(g) => self.push(Node::Global(g)),
            None => Err(Fault::Refused {
                offset: self.offset(),
                global: format!("{module}.{name}"),
            }),
        }
    }

    fn tuple_items(&self, id: Id) -> R<Vec<Id>> {
        match &self.nodes[id as usize] {
            Node::Tuple(v) | Node::List(v) => Ok(v.clone()),
            _ => self.bad("expected an argument tuple"),
        }
    }

    /// `REDUCE` / `NEWOBJ`: builds the data an accepted global stands for.
    fn apply(&mut self, callable: Id, args: Id) -> R<()> {
        let Node::Global(g) = self.nodes[callable as usize] else {
            return self.bad("REDUCE/NEWOBJ on something that is not an accepted global");
        };
        let args = self.tuple_items(args)?;
        match g {
            Global::OrderedDict => {
                let mut pairs = vec![];
                if let Some(&items) = args.first() {
                    for p in self.tuple_items(items)? {
                        match self.tuple_items(p)?.as_slice() {
                            &[k, v] => pairs.push((k, v)),
                            _ => return self.bad("OrderedDict item that is not a pair"),
                        }
                    }
                }
                self.grow(pairs.len())?;
                self.push(Node::Dict(pairs))
            }
            Global::Size => {
                let items = match args.first() {
                    Some(&a) => self.tuple_items(a)?,
                    None => vec![],
                };
                self.grow(items.len())?;
                self.push(Node::Tuple(items))
            }
            Global::Encode => match args.as_slice() {
                &[s, enc] => {
                    let (Node::Str(s), Node::Str(enc)) =
                        (&self.nodes[s as usize], &self.nodes[enc as usize])
                    else {
                        return self.bad("_codecs.encode needs (str, encoding)");
                    };
                    if enc != "latin1" && enc != "latin-1" {
                        return self.bad(format!("_codecs.encode with encoding {enc:?}"));
                    }
                    if s.chars().any(|c| c as u32 > 0xff) {
                        return self.bad("_codecs.encode of a non-latin-1 string");
                    }
                    self.push(Node::Bytes)
                }
                _ => self.bad("_codecs.encode needs two arguments"),
            },
            Global::RebuildParameter => match args.first() {
                Some(&t) if matches!(self.nodes[t as usize], Node::Tensor(_)) => {
                    self.grow(1)?;
                    self.stack.push(t);
                    Ok(())
                }
                _ => self.bad("_rebuild_parameter without a tensor as its first argument"),
            },
            Global::RebuildTensor => {
                let t = self.rebuild_tensor(&args)?;
                self.push(Node::Tensor(t))
            }
            Global::Data => self.push(Node::Record),
            Global::Storage(_) => self.bad("a storage type called as a function"),
        }
    }

    fn int(&self, id: Id, what: &str) -> R<u64> {
        match self.nodes[id as usize] {
            Node::Int(i) if i >= 0 => Ok(i as u64),
            Node::Bool(b) => Ok(b as u64),
            _ => self.bad(format!("{what} is not a non-negative integer")),
        }
    }

    fn dims(&self, id: Id, what: &str) -> R<Vec<u64>> {
        let items = match &self.nodes[id as usize] {
            Node::Tuple(v) | Node::List(v) => v,
            _ => return self.bad(format!("{what} is not a tuple")),
        };
        if items.len() as u64 > MAX_RANK {
            return self.bad(format!(
                "{what} has {} dimensions (at most {MAX_RANK})",
                items.len()
            ));
        }
        items.iter().map(|&i| self.int(i, what)).collect()
    }

    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride, ...)`: every argument is
    /// checked against the storage before the tensor may exist.
    fn rebuild_tensor(&self, args: &[Id]) -> R<TensorRef> {
        if args.len() < 4 {
            return self.bad(format!(
                "_rebuild_tensor with {} arguments (storage, offset, size, stride needed)",
                args.len()
            ));
        }
        let Node::Storage(storage) = &self.nodes[args[0] as usize] else {
            return self.bad("_rebuild_tensor whose first argument is not a storage");
        };
        let offset = self.int(args[1], "the storage offset")?;
        let size = self.dims(args[2], "the size")?;
        let stride = self.dims(args[3], "the stride")?;
        if size.len() != stride.len() {
            return self.bad(format!(
                "size has {} dimensions, stride {}",
                size.len(),
                stride.len()
            ));
        }
        let too_big = |what: &str| self.bad(format!("{what} overflows (size {size:?})"));
        let mut numel: u64 = 1;
        for &s in &size {
            numel = match numel.checked_mul(s) {
                Some(n) => n,
                None => return too_big("the element count"),
            };
        }
        let bytes = match numel.checked_mul(storage.ty.size()) {
            Some(b) => b,
            None => return too_big("the byte size"),
        };
        self.limit(Limit::TensorBytes, bytes, self.limits.max_tensor_bytes)?;
        // Zero strides let a few stored bytes stand for an arbitrarily large tensor: such an
        // expansion may not exceed its storage by more than a small allowance.
        let stored = storage.numel.saturating_mul(storage.ty.size());
        if bytes > stored.max(MAX_EXPANDED_BYTES) {
            return self.bad(format!(
                "size {size:?} with stride {stride:?} expands {stored} stored bytes to {bytes} \
                 (at most {MAX_EXPANDED_BYTES} bytes beyond the storage are accepted)"
            ));
        }
        if numel == 0 {
            if offset > storage.numel {
                return self.bad(format!(
                    "storage offset {offset} past the storage's {} elements",
                    storage.numel
                ));
            }
        } else {
            // Index of the last element: offset + Σ (size−1)·stride, in checked arithmetic.
            let mut last = offset;
            for (&s, &st) in size.iter().zip(&stride) {
                last = match (s - 1).checked_mul(st).and_then(|x| x.checked_add(last)) {
                    Some(l) => l,
                    None => return too_big("the extent"),
                };
            }
            if last >= storage.numel {
                return self.bad(format!(
                    "size {size:?}, stride {stride:?} and offset {offset} reach element {last} \
                     of a storage of {} elements",
                    storage.numel
                ));
            }
        }
        let to_usize = |v: Vec<u64>| v.into_iter().map(|x| x as usize).collect();
        Ok(TensorRef {
            storage: storage.clone(),
            offset,
            shape: to_usize(size),
            stride: to_usize(stride),
        })
    }

    /// A persistent id `('storage', torch.<X>Storage, key, location, numel[, None])`.
    fn persistent(&mut self, pid: Id) -> R<()> {
        let items = match &self.nodes[pid as usize] {
            Node::Tuple(v) => v.clone(),
            _ => return self.bad("a persistent id that is not a tuple"),
        };
        let ok_tag = matches!(items.first().map(|&i| &self.nodes[i as usize]),
            Some(Node::Str(s)) if s == "storage");
        if items.len() < 5 || !ok_tag {
            return self.bad("a persistent id that is not ('storage', type, key, location, numel)");
        }
        let Node::Global(Global::Storage(ty)) = self.nodes[items[1] as usize] else {
            return self.bad("a persistent id whose type is not a torch storage class");
        };
        let key = match &self.nodes[items[2] as usize] {
            Node::Str(s) if s.len() <= 256 => s.clone(),
            Node::Int(i) => i.to_string(),
            _ => return self.bad("a storage key that is not a short string"),
        };
        let numel = self.int(items[4], "the storage element count")?;
        if items.len() > 5 && !matches!(self.nodes[items[5] as usize], Node::None) {
            return self.bad(format!("storage {key} is a view of another storage (legacy storage views are not supported)"));
        }
        let bytes = numel.saturating_mul(ty.size());
        self.limit(Limit::TensorBytes, bytes, self.limits.max_tensor_bytes)?;
        self.push(Node::Storage(StorageRef { key, ty, numel }))
    }

    fn run(&mut self) -> R<Id> {
        loop {
            self.op_pos = self.pos;
            let consumed = (self.pos - self.start) as u64;
            self.limit(Limit::PickleBytes, consumed, self.limits.max_pickle_bytes)?;
            let op = match self.data.get(self.pos) {
                Some(&b) => b,
                None => return self.bad("truncated: the pickle ends without STOP"),
            };
            self.pos += 1;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return self.bad(format!("pickle protocol {proto} (at most 5 known)"));
                    }
                }
                0x95 => {
                    self.take(8)?;
                }
                b'.' => return self.pop(),
                b'(' => {
                    self.limit(
                        Limit::Depth,
                        self.marks.len() as u64 + 1,
                        self.limits.max_depth,
                    )?;
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let id = self.top()?;
                    self.grow(1)?;
                    self.stack.push(id);
                }
                b'N' => self.push(Node::None)?,
                0x88 => self.push(Node::Bool(true))?,
                0x89 => self.push(Node::Bool(false))?,
                b'J' => {
                    let v = i32::from_le_bytes(self.le()?);
                    self.push(Node::Int(v as i64))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Node::Int(v as i64))?;
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le()?);
                    self.push(Node::Int(v as i64))?;
                }
                0x8a => {
                    let n = self.u8()? as u64;
                    self.long(n)?;
                }
                0x8b => {
                    let n = self.count_i32()?;
                    self.long(n)?;
                }
                b'I' | b'L' => {
                    let text = self.line()?;
                    let t = text.trim_end_matches('L');
                    let node = match t {
                        "00" => Node::Bool(false),
                        "01" => Node::Bool(true),
                        _ => match t.parse::<i64>() {
                            Ok(v) => Node::Int(v),
                            Err(_)
                                if !t.is_empty()
                                    && t.trim_start_matches('-')
                                        .bytes()
                                        .all(|b| b.is_ascii_digit()) =>
                            {
                                Node::BigInt
                            }
                            Err(_) => return self.bad(format!("bad integer literal {text:?}")),
                        },
                    };
                    self.push(node)?;
                }
                b'G' => {
                    self.take(8)?;
                    self.push(Node::Float)?;
                }
                b'F' => {
                    let text = self.line()?;
                    if text.parse::<f64>().is_err() {
                        return self.bad(format!("bad float literal {text:?}"));
                    }
                    self.push(Node::Float)?;
                }
                b'X' => {
                    let n = u32::from_le_bytes(self.le()?) as u64;
                    self.string(n)?;
                }
                0x8c => {
                    let n = self.u8()? as u64;
                    self.string(n)?;
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.le()?);
                    self.string(n)?;
                }
                b'T' => {
                    let n = self.count_i32()?;
                    self.byte_string(n)?;
                }
                b'U' => {
                    let n = self.u8()? as u64;
                    self.byte_string(n)?;
                }
                b'B' => {
                    let n = u32::from_le_bytes(self.le()?) as u64;
                    self.bytes(n)?;
                }
                b'C' => {
                    let n = self.u8()? as u64;
                    self.bytes(n)?;
                }
                0x8e | 0x96 => {
                    let n = u64::from_le_bytes(self.le()?);
                    self.bytes(n)?;
                }
                b']' => self.push(Node::List(vec![]))?,
                b')' => self.push(Node::Tuple(vec![]))?,
                b'}' => self.push(Node::Dict(vec![]))?,
                0x8f => self.push(Node::Set(vec![]))?,
                b'l' => {
                    let items = self.pop_mark()?;
                    self.grow(items.len())?;
                    self.push(Node::List(items))?;
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.grow(items.len())?;
                    self.push(Node::Tuple(items))?;
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.grow(items.len())?;
                    self.push(Node::Set(items))?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = vec![0; n];
                    for slot in items.iter_mut().rev() {
                        *slot = self.pop()?;
                    }
                    self.grow(n)?;
                    self.push(Node::Tuple(items))?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    if !items.len().is_multiple_of(2) {
                        return self.bad("DICT with an odd number of items");
                    }
                    self.grow(items.len() / 2)?;
                    let pairs = items.chunks(2).map(|p| (p[0], p[1])).collect();
                    self.push(Node::Dict(pairs))?;
                }
                b'a' => {
                    let item = self.pop()?;
                    let target = self.top()?;
                    self.container_extend(target, vec![item])?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    let target = self.top()?;
                    self.container_extend(target, items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let target = self.top()?;
                    self.dict_extend(target, vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let target = self.top()?;
                    self.dict_extend(target, items)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(&module, &name)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Node::Str(m), Node::Str(n)) =
                        (&self.nodes[module as usize], &self.nodes[name as usize])
                    else {
                        return self.bad("STACK_GLOBAL needs two strings");
                    };
                    let (m, n) = (m.clone(), n.clone());
                    self.global(&m, &n)?;
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    self.apply(callable, args)?;
                }
                0x92 => {
                    let kwargs = self.pop()?;
                    let args = self.pop()?;
                    let class = self.pop()?;
                    if !matches!(&self.nodes[kwargs as usize], Node::Dict(d) if d.is_empty()) {
                        return self.bad("NEWOBJ_EX with keyword arguments");
                    }
                    self.apply(class, args)?;
                }
                b'b' => {
                    // The state of a record, or attributes of a dict (an OrderedDict's
                    // `_metadata`): nothing to keep.
                    self.pop()?;
                    let target = self.top()?;
                    if !matches!(
                        self.nodes[target as usize],
                        Node::Record | Node::Dict(_) | Node::Tensor(_)
                    ) {
                        return self.bad("BUILD on something that is not a record or dict");
                    }
                }
                b'p' => {
                    let text = self.line()?;
                    let key = text
                        .parse::<u32>()
                        .or_else(|_| self.bad(format!("bad memo key {text:?}")))?;
                    self.memo_put(key)?;
                }
                b'q' => {
                    let key = self.u8()? as u32;
                    self.memo_put(key)?;
                }
                b'r' => {
                    let key = u32::from_le_bytes(self.le()?);
                    self.memo_put(key)?;
                }
                0x94 => {
                    let key = u32::try_from(self.memo.len()).or_else(|_| self.bad("memo full"))?;
                    self.memo_put(key)?;
                }
                b'g' => {
                    let text = self.line()?;
                    let key = text
                        .parse::<u32>()
                        .or_else(|_| self.bad(format!("bad memo key {text:?}")))?;
                    self.memo_get(key)?;
                }
                b'h' => {
                    let key = self.u8()? as u32;
                    self.memo_get(key)?;
                }
                b'j' => {
                    let key = u32::from_le_bytes(self.le()?);
                    self.memo_get(key)?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.persistent(pid)?;
                }
                b'P' => {
                    return self.bad("a text persistent id (PyTorch writes binary ones)");
                }
                b'i' | b'o' | 0x82..=0x84 | 0x97 | 0x98 => {
                    return self.bad(format!(
                        "opcode 0x{op:02x} (INST/OBJ/EXT/buffers) is not accepted"
                    ));
                }
                _ => return self.bad(format!("unknown opcode 0x{op:02x}")),
            }
        }
    }
}

/// Tensors of more dimensions than this are refused (PyTorch allows 64).
const MAX_RANK: u64 = 64;

/// The largest tensor (bytes) that may be an expansion (zero strides) of a smaller storage.
const MAX_EXPANDED_BYTES: u64 = 256 << 20;
