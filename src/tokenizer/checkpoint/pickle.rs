//! A minimal, non-executing pickle interpreter for the `data.pkl` entry of TorchScript archives.
//!
//! Python's pickle format is a small stack machine whose `GLOBAL`/`REDUCE`/`NEWOBJ`/`BUILD`
//! opcodes would normally import and call arbitrary Python code. This interpreter never calls
//! anything: it understands exactly the opcodes that `torch.jit.save` writes for a module tree and
//! a short allowlist of globals, each of which is turned into inert data:
//!
//! * `torch._utils _rebuild_tensor_v2`: a tensor description (storage, offset, size, stride);
//! * `torch <Type>Storage` (only as part of a `BINPERSID` storage id): the element type;
//! * `collections OrderedDict`: an empty dict (the tensors' backward-hook argument);
//! * `__torch__.<path> <Class>`: a TorchScript module, i.e. a plain container of attributes. The
//!   class name is kept for messages only and never interpreted.
//!
//! Everything else is rejected with the offending opcode or global and its byte offset. Objects
//! live in an arena and the stack and memo hold copyable handles, so memo references never copy
//! data (no "billion laughs"), and every resource (stack, marks, memo, objects, string lengths,
//! tensor ranks and element counts, walk depth and size) is bounded. Every opcode consumes at
//! least one input byte, so the interpreter always terminates.

use std::collections::{HashMap, HashSet};

use candle_core::DType;

/// Largest number of values on the pickle stack.
pub(crate) const MAX_STACK: usize = 1 << 20;
/// Largest number of nested MARKs.
pub(crate) const MAX_MARKS: usize = 1 << 16;
/// Largest number of memo entries.
pub(crate) const MAX_MEMO: usize = 1 << 22;
/// Largest number of objects (strings, tuples, dicts, modules, ...) one pickle may create.
pub(crate) const MAX_OBJECTS: usize = 1 << 22;
/// Longest string (in bytes) accepted from `BINUNICODE`.
pub(crate) const MAX_STRING_LEN: usize = 1 << 20;
/// Longest `GLOBAL` module or name line.
pub(crate) const MAX_GLOBAL_LEN: usize = 4096;
/// Deepest module nesting accepted when walking the module tree.
pub(crate) const MAX_DEPTH: usize = 128;
/// Most attributes visited while walking the module tree (guards against shared sub-trees
/// that would make the walk exponential).
pub(crate) const MAX_VISITS: usize = 1 << 20;
/// Most tensors one archive may hold.
pub(crate) const MAX_TENSORS: usize = 1 << 20;
/// Largest tensor rank.
pub(crate) const MAX_NDIM: usize = 64;
/// Most elements in one tensor or storage (2^34).
pub(crate) const MAX_NUMEL: u64 = 1 << 34;
/// Longest dotted tensor name.
pub(crate) const MAX_NAME_LEN: usize = 4096;
/// Longest storage key or device string.
pub(crate) const MAX_KEY_LEN: usize = 256;

/// Everything that can go wrong while interpreting or walking the pickle.
#[derive(Debug)]
pub(crate) enum PickleError {
    /// The stream ended before `STOP`.
    Truncated { offset: u64 },
    /// An opcode outside the accepted set.
    UnsupportedOpcode { opcode: u8, offset: u64 },
    /// A `GLOBAL` outside the allowlist.
    DisallowedGlobal { global: String, offset: u64 },
    /// A storage type that is allowed in PyTorch but has no candle equivalent.
    UnsupportedDtype { storage: String, offset: u64 },
    /// Anything else that is wrong with the opcode stream.
    Malformed { offset: u64, detail: String },
    /// A safety bound was exceeded.
    Limit { what: String, limit: u64 },
    /// The object tree is not a TorchScript module tree.
    Structure { path: String, detail: String },
}

/// The storage a tensor views: one `data/<key>` entry of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StorageRef {
    pub key: String,
    pub dtype: DType,
    /// The PyTorch class name, e.g. `FloatStorage`, for messages.
    pub class: &'static str,
    /// The device the storage was saved from (`cpu`, `cuda:0`, ...); informational.
    pub device: String,
    /// Number of elements the storage declares.
    pub numel: u64,
}

/// A tensor found in the module tree, not yet materialised.
#[derive(Debug, Clone)]
pub(crate) struct PickledTensor {
    pub name: String,
    pub storage: StorageRef,
    pub offset: u64,
    pub size: Vec<u64>,
    pub stride: Vec<u64>,
}

type Result<T> = std::result::Result<T, PickleError>;

/// Interprets `data` (the bytes of `data.pkl`) and returns every tensor of the module tree, in
/// pickling order, named by joining attribute names with `.` (the state-dict keys).
pub(crate) fn parse_module_tensors(data: &[u8]) -> Result<Vec<PickledTensor>> {
    let mut vm = Vm::new(data);
    let root = vm.run()?;
    vm.collect_tensors(root)
}

#[derive(Debug, Clone, Copy)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Obj(usize),
}

#[derive(Debug)]
struct TensorSpec {
    storage: usize,
    offset: u64,
    size: Vec<u64>,
    stride: Vec<u64>,
}

#[derive(Debug)]
enum Global {
    RebuildTensorV2,
    OrderedDict,
    Storage { dtype: DType, class: &'static str },
    ModuleClass(String),
}

#[derive(Debug)]
enum Obj {
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(Global),
    Storage(StorageRef),
    Tensor(TensorSpec),
    Module { state: Option<Value> },
}

mod op {
    pub const MARK: u8 = b'(';
    pub const STOP: u8 = b'.';
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const NONE: u8 = b'N';
    pub const BINPERSID: u8 = b'Q';
    pub const REDUCE: u8 = b'R';
    pub const BINUNICODE: u8 = b'X';
    pub const APPEND: u8 = b'a';
    pub const BUILD: u8 = b'b';
    pub const GLOBAL: u8 = b'c';
    pub const APPENDS: u8 = b'e';
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
    pub const EMPTY_LIST: u8 = b']';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const SETITEM: u8 = b's';
    pub const TUPLE: u8 = b't';
    pub const SETITEMS: u8 = b'u';
    pub const EMPTY_DICT: u8 = b'}';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const BINFLOAT: u8 = b'G';
    pub const PROTO: u8 = 0x80;
    pub const NEWOBJ: u8 = 0x81;
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const LONG1: u8 = 0x8a;
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const MEMOIZE: u8 = 0x94;
    pub const FRAME: u8 = 0x95;
}

/// The name of a pickle opcode, for error messages (`0x63 'c' (GLOBAL)`).
pub(crate) fn opcode_name(opcode: u8) -> &'static str {
    match opcode {
        b'(' => "MARK",
        b'.' => "STOP",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'F' => "FLOAT",
        b'I' => "INT",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'L' => "LONG",
        b'M' => "BININT2",
        b'N' => "NONE",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        b'R' => "REDUCE",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'V' => "UNICODE",
        b'X' => "BINUNICODE",
        b'a' => "APPEND",
        b'b' => "BUILD",
        b'c' => "GLOBAL",
        b'd' => "DICT",
        b'}' => "EMPTY_DICT",
        b'e' => "APPENDS",
        b'g' => "GET",
        b'h' => "BINGET",
        b'i' => "INST",
        b'j' => "LONG_BINGET",
        b'l' => "LIST",
        b']' => "EMPTY_LIST",
        b'o' => "OBJ",
        b'p' => "PUT",
        b'q' => "BINPUT",
        b'r' => "LONG_BINPUT",
        b's' => "SETITEM",
        b't' => "TUPLE",
        b')' => "EMPTY_TUPLE",
        b'u' => "SETITEMS",
        b'G' => "BINFLOAT",
        0x80 => "PROTO",
        0x81 => "NEWOBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x85 => "TUPLE1",
        0x86 => "TUPLE2",
        0x87 => "TUPLE3",
        0x88 => "NEWTRUE",
        0x89 => "NEWFALSE",
        0x8a => "LONG1",
        0x8b => "LONG4",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        0x8c => "SHORT_BINUNICODE",
        0x8d => "BINUNICODE8",
        0x8e => "BINBYTES8",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x93 => "STACK_GLOBAL",
        0x94 => "MEMOIZE",
        0x95 => "FRAME",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => "unknown opcode",
    }
}

/// Maps an allowed `torch <Type>Storage` class to its dtype. `Ok(None)`: not a storage class.
/// `Err(())`: a PyTorch storage class without a candle equivalent.
fn storage_dtype(name: &str) -> std::result::Result<Option<(DType, &'static str)>, ()> {
    let found = match name {
        "FloatStorage" => (DType::F32, "FloatStorage"),
        "DoubleStorage" => (DType::F64, "DoubleStorage"),
        "HalfStorage" => (DType::F16, "HalfStorage"),
        "BFloat16Storage" => (DType::BF16, "BFloat16Storage"),
        "LongStorage" => (DType::I64, "LongStorage"),
        "IntStorage" => (DType::I32, "IntStorage"),
        "ShortStorage" => (DType::I16, "ShortStorage"),
        "ByteStorage" => (DType::U8, "ByteStorage"),
        // Booleans are stored one byte each, 0 or 1; they are read as U8.
        "BoolStorage" => (DType::U8, "BoolStorage"),
        "UInt32Storage" => (DType::U32, "UInt32Storage"),
        "Float8_e4m3fnStorage" => (DType::F8E4M3, "Float8_e4m3fnStorage"),
        "CharStorage"
        | "UInt16Storage"
        | "UInt64Storage"
        | "ComplexHalfStorage"
        | "ComplexFloatStorage"
        | "ComplexDoubleStorage"
        | "QInt8Storage"
        | "QUInt8Storage"
        | "QInt32Storage"
        | "QUInt4x2Storage"
        | "QUInt2x4Storage"
        | "Float8_e5m2Storage"
        | "Float8_e5m2fnuzStorage"
        | "Float8_e4m3fnuzStorage"
        | "Float8_e8m0fnuStorage"
        | "Float4_e2m1fn_x2Storage"
        | "UntypedStorage" => return Err(()),
        _ => return Ok(None),
    };
    Ok(Some(found))
}

fn is_identifier_path(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|part| {
            !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

fn is_valid_storage_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key != "."
        && key != ".."
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    /// Byte offset of the opcode being executed, for messages.
    op_pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    objs: Vec<Obj>,
}

impl<'a> Vm<'a> {
    fn new(data: &'a [u8]) -> Self {
        Vm {
            data,
            pos: 0,
            op_pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            objs: Vec::new(),
        }
    }

    // ----- errors -------------------------------------------------------------------------

    fn malformed(&self, detail: impl Into<String>) -> PickleError {
        PickleError::Malformed {
            offset: self.op_pos as u64,
            detail: detail.into(),
        }
    }

    fn limit(what: &str, limit: usize) -> PickleError {
        PickleError::Limit {
            what: what.to_string(),
            limit: limit as u64,
        }
    }

    // ----- input --------------------------------------------------------------------------

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or(PickleError::Truncated {
            offset: self.pos as u64,
        })?;
        let bytes = self.data.get(self.pos..end).ok_or(PickleError::Truncated {
            offset: self.data.len() as u64,
        })?;
        self.pos = end;
        Ok(bytes)
    }

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let bytes = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn read_u8(&mut self) -> Result<u8> {
        let [b] = self.take_array::<1>()?;
        Ok(b)
    }

    fn read_u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take_array()?))
    }

    fn read_u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take_array()?))
    }

    /// A newline-terminated line of at most `MAX_GLOBAL_LEN` bytes (for `GLOBAL`).
    fn read_line(&mut self) -> Result<&'a str> {
        let rest = self.data.get(self.pos..).unwrap_or_default();
        let window = rest
            .get(..rest.len().min(MAX_GLOBAL_LEN + 1))
            .unwrap_or(rest);
        let Some(len) = window.iter().position(|&b| b == b'\n') else {
            if rest.len() <= MAX_GLOBAL_LEN {
                return Err(PickleError::Truncated {
                    offset: self.data.len() as u64,
                });
            }
            return Err(self.malformed(format!("GLOBAL name longer than {MAX_GLOBAL_LEN} bytes")));
        };
        let line = self.take(len)?;
        self.take(1)?;
        std::str::from_utf8(line).map_err(|_| self.malformed("GLOBAL name is not valid UTF-8"))
    }

    fn read_string(&mut self, len: usize) -> Result<String> {
        if len > MAX_STRING_LEN {
            return Err(self.malformed(format!(
                "string of {len} bytes is longer than the limit of {MAX_STRING_LEN}"
            )));
        }
        let bytes = self.take(len)?;
        let s =
            std::str::from_utf8(bytes).map_err(|_| self.malformed("string is not valid UTF-8"))?;
        Ok(s.to_owned())
    }

    // ----- stack, memo, arena -------------------------------------------------------------

    fn push(&mut self, v: Value) -> Result<()> {
        if self.stack.len() >= MAX_STACK {
            return Err(Self::limit("pickle stack depth", MAX_STACK));
        }
        self.stack.push(v);
        Ok(())
    }

    fn new_obj(&mut self, obj: Obj) -> Result<Value> {
        if self.objs.len() >= MAX_OBJECTS {
            return Err(Self::limit("number of pickled objects", MAX_OBJECTS));
        }
        self.objs.push(obj);
        Ok(Value::Obj(self.objs.len() - 1))
    }

    fn push_obj(&mut self, obj: Obj) -> Result<()> {
        let v = self.new_obj(obj)?;
        self.push(v)
    }

    /// The stack floor: values below the innermost MARK cannot be popped.
    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<Value> {
        if self.stack.len() <= self.floor() {
            return Err(self.malformed("stack underflow"));
        }
        self.stack
            .pop()
            .ok_or_else(|| self.malformed("stack underflow"))
    }

    fn top(&self) -> Result<Value> {
        if self.stack.len() <= self.floor() {
            return Err(self.malformed("stack underflow"));
        }
        self.stack
            .last()
            .copied()
            .ok_or_else(|| self.malformed("stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| self.malformed("no MARK on the stack"))?;
        if mark > self.stack.len() {
            return Err(self.malformed("stack underflow"));
        }
        Ok(self.stack.split_off(mark))
    }

    fn memo_put(&mut self, key: u32) -> Result<()> {
        let v = self.top()?;
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&key) {
            return Err(Self::limit("number of pickle memo entries", MAX_MEMO));
        }
        self.memo.insert(key, v);
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> Result<()> {
        let v =
            self.memo.get(&key).copied().ok_or_else(|| {
                self.malformed(format!("memo entry {key} is used before it is set"))
            })?;
        self.push(v)
    }

    fn obj(&self, v: Value) -> Option<&Obj> {
        match v {
            Value::Obj(id) => self.objs.get(id),
            _ => None,
        }
    }

    fn describe(&self, v: Value) -> String {
        match v {
            Value::None => "None".into(),
            Value::Bool(b) => format!("the bool {}", if b { "True" } else { "False" }),
            Value::Int(i) => format!("the int {i}"),
            Value::Float(f) => format!("the float {f}"),
            Value::Obj(_) => match self.obj(v) {
                Some(Obj::Str(_)) => "a string".into(),
                Some(Obj::Tuple(t)) => format!("a tuple of length {}", t.len()),
                Some(Obj::List(_)) => "a list".into(),
                Some(Obj::Dict(_)) => "a dict".into(),
                Some(Obj::Global(g)) => match g {
                    Global::RebuildTensorV2 => "`torch._utils._rebuild_tensor_v2`".into(),
                    Global::OrderedDict => "`collections.OrderedDict`".into(),
                    Global::Storage { class, .. } => format!("`torch.{class}`"),
                    Global::ModuleClass(c) => format!("the class `{c}`"),
                },
                Some(Obj::Storage(_)) => "a storage".into(),
                Some(Obj::Tensor(_)) => "a tensor".into(),
                Some(Obj::Module { .. }) => "a module".into(),
                None => "an invalid object".into(),
            },
        }
    }

    fn str_of(&self, v: Value) -> Option<&str> {
        match self.obj(v) {
            Some(Obj::Str(s)) => Some(s.as_str()),
            _ => None,
        }
    }

    fn tuple_of(&self, v: Value) -> Option<&[Value]> {
        match self.obj(v) {
            Some(Obj::Tuple(t)) => Some(t.as_slice()),
            _ => None,
        }
    }

    // ----- the interpreter ----------------------------------------------------------------

    fn run(&mut self) -> Result<Value> {
        loop {
            self.op_pos = self.pos;
            let opcode = self.read_u8()?;
            match opcode {
                op::PROTO => {
                    let version = self.read_u8()?;
                    if !(2..=5).contains(&version) {
                        return Err(self.malformed(format!(
                            "pickle protocol {version} is not supported (expected 2 to 5)"
                        )));
                    }
                }
                op::FRAME => {
                    let len = u64::from_le_bytes(self.take_array()?);
                    let remaining = self.data.len().saturating_sub(self.pos) as u64;
                    if len > remaining {
                        return Err(PickleError::Truncated {
                            offset: self.data.len() as u64,
                        });
                    }
                }
                op::STOP => return self.pop(),
                op::MARK => {
                    if self.marks.len() >= MAX_MARKS {
                        return Err(Self::limit("pickle MARK nesting", MAX_MARKS));
                    }
                    self.marks.push(self.stack.len());
                }
                op::NONE => self.push(Value::None)?,
                op::NEWTRUE => self.push(Value::Bool(true))?,
                op::NEWFALSE => self.push(Value::Bool(false))?,
                op::BININT => {
                    let v = i32::from_le_bytes(self.take_array()?);
                    self.push(Value::Int(i64::from(v)))?;
                }
                op::BININT1 => {
                    let v = self.read_u8()?;
                    self.push(Value::Int(i64::from(v)))?;
                }
                op::BININT2 => {
                    let v = self.read_u16()?;
                    self.push(Value::Int(i64::from(v)))?;
                }
                op::LONG1 => {
                    let n = usize::from(self.read_u8()?);
                    if n > 8 {
                        return Err(
                            self.malformed(format!("integer of {n} bytes does not fit in 64 bits"))
                        );
                    }
                    let bytes = self.take(n)?;
                    let mut buf = [0u8; 8];
                    if let (Some(dst), Some(&last)) = (buf.get_mut(..n), bytes.last()) {
                        dst.copy_from_slice(bytes);
                        if last & 0x80 != 0 {
                            // Sign-extend a negative two's-complement number.
                            for b in buf.iter_mut().skip(n) {
                                *b = 0xff;
                            }
                        }
                    }
                    self.push(Value::Int(i64::from_le_bytes(buf)))?;
                }
                op::BINFLOAT => {
                    let v = f64::from_be_bytes(self.take_array()?);
                    self.push(Value::Float(v))?;
                }
                op::BINUNICODE => {
                    let len = self.read_u32()? as usize;
                    let s = self.read_string(len)?;
                    self.push_obj(Obj::Str(s))?;
                }
                op::SHORT_BINUNICODE => {
                    let len = usize::from(self.read_u8()?);
                    let s = self.read_string(len)?;
                    self.push_obj(Obj::Str(s))?;
                }
                op::BINPUT => {
                    let key = self.read_u8()?;
                    self.memo_put(u32::from(key))?;
                }
                op::LONG_BINPUT => {
                    let key = self.read_u32()?;
                    self.memo_put(key)?;
                }
                op::MEMOIZE => {
                    let key = u32::try_from(self.memo.len())
                        .map_err(|_| Self::limit("number of pickle memo entries", MAX_MEMO))?;
                    self.memo_put(key)?;
                }
                op::BINGET => {
                    let key = self.read_u8()?;
                    self.memo_get(u32::from(key))?;
                }
                op::LONG_BINGET => {
                    let key = self.read_u32()?;
                    self.memo_get(key)?;
                }
                op::EMPTY_TUPLE => self.push_obj(Obj::Tuple(Vec::new()))?,
                op::TUPLE => {
                    let items = self.pop_mark()?;
                    self.push_obj(Obj::Tuple(items))?;
                }
                op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                    let n = usize::from(opcode - op::TUPLE1) + 1;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push_obj(Obj::Tuple(items))?;
                }
                op::EMPTY_LIST => self.push_obj(Obj::List(Vec::new()))?,
                op::EMPTY_DICT => self.push_obj(Obj::Dict(Vec::new()))?,
                op::APPEND => {
                    let v = self.pop()?;
                    let list = self.top()?;
                    self.list_mut(list)?.push(v);
                }
                op::APPENDS => {
                    let items = self.pop_mark()?;
                    let list = self.top()?;
                    self.list_mut(list)?.extend(items);
                }
                op::SETITEM => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let dict = self.top()?;
                    self.dict_mut(dict)?.push((k, v));
                }
                op::SETITEMS => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return Err(self.malformed("SETITEMS with an odd number of items"));
                    }
                    let dict = self.top()?;
                    let pairs = items.chunks_exact(2).filter_map(|kv| match kv {
                        [k, v] => Some((*k, *v)),
                        _ => None,
                    });
                    let pairs: Vec<_> = pairs.collect();
                    self.dict_mut(dict)?.extend(pairs);
                }
                op::GLOBAL => {
                    let module = self.read_line()?;
                    let name = self.read_line()?;
                    let global = self.resolve_global(module, name)?;
                    self.push_obj(Obj::Global(global))?;
                }
                op::BINPERSID => {
                    let pid = self.pop()?;
                    let storage = self.persistent_load(pid)?;
                    self.push_obj(Obj::Storage(storage))?;
                }
                op::NEWOBJ => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let obj = self.new_object(cls, args)?;
                    self.push_obj(obj)?;
                }
                op::REDUCE => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let obj = self.reduce(callable, args)?;
                    self.push_obj(obj)?;
                }
                op::BUILD => {
                    let state = self.pop()?;
                    let target = self.top()?;
                    let slot = match target {
                        Value::Obj(id) => match self.objs.get_mut(id) {
                            Some(Obj::Module { state: slot }) => Some(slot),
                            _ => None,
                        },
                        _ => None,
                    };
                    match slot {
                        Some(slot @ None) => *slot = Some(state),
                        Some(Some(_)) => {
                            return Err(self.malformed("BUILD applied twice to one module"))
                        }
                        None => {
                            return Err(self.malformed(format!(
                                "BUILD applied to {}; only TorchScript modules can be built",
                                self.describe(target)
                            )))
                        }
                    }
                }
                other => {
                    return Err(PickleError::UnsupportedOpcode {
                        opcode: other,
                        offset: self.op_pos as u64,
                    })
                }
            }
        }
    }

    fn list_mut(&mut self, v: Value) -> Result<&mut Vec<Value>> {
        let id = match v {
            Value::Obj(id) if matches!(self.objs.get(id), Some(Obj::List(_))) => id,
            _ => {
                return Err(self.malformed(format!(
                    "APPEND to {}, which is not a list",
                    self.describe(v)
                )))
            }
        };
        let offset = self.op_pos as u64;
        match self.objs.get_mut(id) {
            Some(Obj::List(l)) => Ok(l),
            _ => Err(PickleError::Malformed {
                offset,
                detail: "APPEND to something that is not a list".into(),
            }),
        }
    }

    fn dict_mut(&mut self, v: Value) -> Result<&mut Vec<(Value, Value)>> {
        let id = match v {
            Value::Obj(id) if matches!(self.objs.get(id), Some(Obj::Dict(_))) => id,
            _ => {
                return Err(self.malformed(format!(
                    "SETITEM on {}, which is not a dict",
                    self.describe(v)
                )))
            }
        };
        let offset = self.op_pos as u64;
        match self.objs.get_mut(id) {
            Some(Obj::Dict(d)) => Ok(d),
            _ => Err(PickleError::Malformed {
                offset,
                detail: "SETITEM on something that is not a dict".into(),
            }),
        }
    }

    fn resolve_global(&self, module: &str, name: &str) -> Result<Global> {
        let offset = self.op_pos as u64;
        let disallowed = || PickleError::DisallowedGlobal {
            global: format!("{module}.{name}"),
            offset,
        };
        match (module, name) {
            ("torch._utils", "_rebuild_tensor_v2") => Ok(Global::RebuildTensorV2),
            ("collections", "OrderedDict") => Ok(Global::OrderedDict),
            ("torch", storage) => match storage_dtype(storage) {
                Ok(Some((dtype, class))) => Ok(Global::Storage { dtype, class }),
                Ok(None) => Err(disallowed()),
                Err(()) => Err(PickleError::UnsupportedDtype {
                    storage: format!("torch.{storage}"),
                    offset,
                }),
            },
            (m, n)
                if (m == "__torch__" || m.starts_with("__torch__."))
                    && is_identifier_path(m)
                    && is_identifier_path(n)
                    && !n.contains('.') =>
            {
                Ok(Global::ModuleClass(format!("{m}.{n}")))
            }
            _ => Err(disallowed()),
        }
    }

    /// `BINPERSID`: `('storage', <torch XStorage>, key, device, numel)`.
    fn persistent_load(&self, pid: Value) -> Result<StorageRef> {
        let bad = |detail: String| self.malformed(format!("invalid storage id: {detail}"));
        let items = self.tuple_of(pid).ok_or_else(|| {
            bad(format!(
                "expected a tuple ('storage', type, key, device, numel), found {}",
                self.describe(pid)
            ))
        })?;
        let [tag, class, key, device, numel] = items else {
            return Err(bad(format!(
                "expected 5 items ('storage', type, key, device, numel), found {}",
                items.len()
            )));
        };
        if self.str_of(*tag) != Some("storage") {
            return Err(bad(format!(
                "the first item is {}, not 'storage'",
                self.describe(*tag)
            )));
        }
        let (dtype, class) = match self.obj(*class) {
            Some(Obj::Global(Global::Storage { dtype, class })) => (*dtype, *class),
            _ => {
                return Err(bad(format!(
                    "the storage type is {}, not a torch storage class",
                    self.describe(*class)
                )))
            }
        };
        let key = self
            .str_of(*key)
            .ok_or_else(|| bad(format!("the key is {}, not a string", self.describe(*key))))?;
        if !is_valid_storage_key(key) {
            return Err(bad(format!(
                "the storage key {:?} is not a plain file name",
                key.chars().take(64).collect::<String>()
            )));
        }
        let device = self.str_of(*device).ok_or_else(|| {
            bad(format!(
                "the device is {}, not a string",
                self.describe(*device)
            ))
        })?;
        if device.len() > MAX_KEY_LEN {
            return Err(bad("the device name is too long".into()));
        }
        let numel = match *numel {
            Value::Int(n) => {
                u64::try_from(n).map_err(|_| bad(format!("negative element count {n}")))?
            }
            other => {
                return Err(bad(format!(
                    "the element count is {}, not an int",
                    self.describe(other)
                )))
            }
        };
        if numel > MAX_NUMEL {
            return Err(Self::limit_u64(
                format!("element count of storage `{key}` ({numel})"),
                MAX_NUMEL,
            ));
        }
        Ok(StorageRef {
            key: key.to_owned(),
            dtype,
            class,
            device: device.to_owned(),
            numel,
        })
    }

    fn limit_u64(what: String, limit: u64) -> PickleError {
        PickleError::Limit { what, limit }
    }

    fn new_object(&self, cls: Value, args: Value) -> Result<Obj> {
        let no_args = self.tuple_of(args).is_some_and(|a| a.is_empty());
        match self.obj(cls) {
            Some(Obj::Global(Global::ModuleClass(_))) if no_args => Ok(Obj::Module { state: None }),
            Some(Obj::Global(Global::OrderedDict)) if no_args => Ok(Obj::Dict(Vec::new())),
            _ => Err(self.malformed(format!(
                "NEWOBJ of {} with {}; only TorchScript module classes without arguments \
                 are accepted",
                self.describe(cls),
                self.describe(args)
            ))),
        }
    }

    fn reduce(&self, callable: Value, args: Value) -> Result<Obj> {
        match self.obj(callable) {
            Some(Obj::Global(Global::RebuildTensorV2)) => {
                self.rebuild_tensor(args).map(Obj::Tensor)
            }
            Some(Obj::Global(Global::OrderedDict))
                if self.tuple_of(args).is_some_and(|a| a.is_empty()) =>
            {
                Ok(Obj::Dict(Vec::new()))
            }
            _ => Err(self.malformed(format!(
                "REDUCE calls {} with {}; only `torch._utils._rebuild_tensor_v2` and \
                 `collections.OrderedDict()` are accepted",
                self.describe(callable),
                self.describe(args)
            ))),
        }
    }

    fn int_list(&self, v: Value, what: &str) -> Result<Vec<u64>> {
        let items = self.tuple_of(v).ok_or_else(|| {
            self.malformed(format!(
                "invalid tensor: {what} is {}, not a tuple",
                self.describe(v)
            ))
        })?;
        if items.len() > MAX_NDIM {
            return Err(self.malformed(format!(
                "invalid tensor: {what} has {} dimensions (limit {MAX_NDIM})",
                items.len()
            )));
        }
        items
            .iter()
            .map(|item| match *item {
                Value::Int(n) => u64::try_from(n).map_err(|_| {
                    self.malformed(format!(
                        "invalid tensor: {what} contains the negative value {n}"
                    ))
                }),
                other => Err(self.malformed(format!(
                    "invalid tensor: {what} contains {}, not an int",
                    self.describe(other)
                ))),
            })
            .collect()
    }

    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
    /// backward_hooks[, metadata])`.
    fn rebuild_tensor(&self, args: Value) -> Result<TensorSpec> {
        let items = self.tuple_of(args).ok_or_else(|| {
            self.malformed(format!(
                "_rebuild_tensor_v2 called with {}, not an argument tuple",
                self.describe(args)
            ))
        })?;
        let (storage, offset, size, stride, requires_grad, hooks, metadata) = match items {
            [a, b, c, d, e, f] => (*a, *b, *c, *d, *e, *f, Value::None),
            [a, b, c, d, e, f, g] => (*a, *b, *c, *d, *e, *f, *g),
            _ => {
                return Err(self.malformed(format!(
                    "_rebuild_tensor_v2 called with {} arguments (expected 6 or 7)",
                    items.len()
                )))
            }
        };
        let storage_id = match storage {
            Value::Obj(id) if matches!(self.objs.get(id), Some(Obj::Storage(_))) => id,
            other => {
                return Err(self.malformed(format!(
                    "invalid tensor: its storage is {}, not a persistent storage id",
                    self.describe(other)
                )))
            }
        };
        let offset = match offset {
            Value::Int(n) => u64::try_from(n).map_err(|_| {
                self.malformed(format!("invalid tensor: negative storage offset {n}"))
            })?,
            other => {
                return Err(self.malformed(format!(
                    "invalid tensor: its storage offset is {}, not an int",
                    self.describe(other)
                )))
            }
        };
        let size = self.int_list(size, "its size")?;
        let stride = self.int_list(stride, "its stride")?;
        if size.len() != stride.len() {
            return Err(self.malformed(format!(
                "invalid tensor: size {size:?} and stride {stride:?} have different lengths"
            )));
        }
        if !matches!(requires_grad, Value::Bool(_)) {
            return Err(self.malformed(format!(
                "invalid tensor: requires_grad is {}, not a bool",
                self.describe(requires_grad)
            )));
        }
        if !matches!(self.obj(hooks), Some(Obj::Dict(_))) {
            return Err(self.malformed(format!(
                "invalid tensor: backward hooks are {}, not a dict",
                self.describe(hooks)
            )));
        }
        if !(matches!(metadata, Value::None) || matches!(self.obj(metadata), Some(Obj::Dict(_)))) {
            return Err(self.malformed(format!(
                "invalid tensor: metadata is {}, not a dict",
                self.describe(metadata)
            )));
        }
        // Element count and the last element touched, both bounded.
        let mut numel: u64 = 1;
        for &s in &size {
            numel = numel
                .checked_mul(s)
                .filter(|&n| n <= MAX_NUMEL)
                .ok_or_else(|| {
                    Self::limit_u64(
                        format!("element count of a tensor of size {size:?}"),
                        MAX_NUMEL,
                    )
                })?;
        }
        if numel > 0 {
            let Some(Obj::Storage(st)) = self.objs.get(storage_id) else {
                return Err(self.malformed("invalid tensor storage"));
            };
            let last = last_index(offset, &size, &stride).ok_or_else(|| {
                self.malformed(format!(
                    "invalid tensor: offset {offset}, size {size:?} and stride {stride:?} \
                     overflow"
                ))
            })?;
            if last >= st.numel {
                return Err(self.malformed(format!(
                    "invalid tensor: offset {offset}, size {size:?} and stride {stride:?} reach \
                     element {last}, but storage `{}` has only {} elements",
                    st.key, st.numel
                )));
            }
        }
        Ok(TensorSpec {
            storage: storage_id,
            offset,
            size,
            stride,
        })
    }

    // ----- walking the module tree ----------------------------------------------------------

    fn collect_tensors(&self, root: Value) -> Result<Vec<PickledTensor>> {
        match self.obj(root) {
            Some(Obj::Module { .. }) => {}
            Some(Obj::Dict(_)) => {
                return Err(PickleError::Structure {
                    path: "<root>".into(),
                    detail: "the pickled root object is a dict, not a TorchScript module (this \
                             looks like a torch.save checkpoint)"
                        .into(),
                })
            }
            _ => {
                return Err(PickleError::Structure {
                    path: "<root>".into(),
                    detail: format!(
                        "the pickled root object is {}, not a TorchScript module",
                        self.describe(root)
                    ),
                })
            }
        }
        let mut walk = Walk {
            out: Vec::new(),
            visits: 0,
            names: HashSet::new(),
        };
        let mut prefix = String::new();
        self.walk_module(root, &mut prefix, 0, &mut walk)?;
        Ok(walk.out)
    }

    fn walk_module(
        &self,
        module: Value,
        prefix: &mut String,
        depth: usize,
        walk: &mut Walk,
    ) -> Result<()> {
        let path = || {
            if prefix.is_empty() {
                "<root>".to_string()
            } else {
                prefix.trim_end_matches('.').to_string()
            }
        };
        if depth > MAX_DEPTH {
            return Err(Self::limit("module nesting depth", MAX_DEPTH));
        }
        let state = match self.obj(module) {
            Some(Obj::Module { state: Some(state) }) => *state,
            _ => {
                return Err(PickleError::Structure {
                    path: path(),
                    detail: "module has no attribute dict (missing BUILD)".into(),
                })
            }
        };
        let Some(Obj::Dict(pairs)) = self.obj(state) else {
            return Err(PickleError::Structure {
                path: path(),
                detail: format!(
                    "module state is {}, expected an attribute dict",
                    self.describe(state)
                ),
            });
        };
        // Python dict semantics: a repeated key keeps its first position and its last value.
        let mut order: Vec<(&str, Value)> = Vec::with_capacity(pairs.len());
        let mut index: HashMap<&str, usize> = HashMap::with_capacity(pairs.len());
        for &(k, v) in pairs {
            walk.visits += 1;
            if walk.visits > MAX_VISITS {
                return Err(Self::limit(
                    "number of module attributes visited",
                    MAX_VISITS,
                ));
            }
            let Some(k) = self.str_of(k) else {
                return Err(PickleError::Structure {
                    path: path(),
                    detail: format!("attribute name is {}, not a string", self.describe(k)),
                });
            };
            match index.get(k) {
                Some(&i) => {
                    if let Some(slot) = order.get_mut(i) {
                        slot.1 = v;
                    }
                }
                None => {
                    index.insert(k, order.len());
                    order.push((k, v));
                }
            }
        }
        for (k, v) in order {
            match self.obj(v) {
                Some(Obj::Tensor(spec)) => {
                    let name = format!("{prefix}{k}");
                    self.push_tensor(name, spec, walk)?;
                }
                Some(Obj::Module { .. }) => {
                    let len = prefix.len();
                    prefix.push_str(k);
                    prefix.push('.');
                    if prefix.len() > MAX_NAME_LEN {
                        return Err(Self::limit("length of a tensor name", MAX_NAME_LEN));
                    }
                    let result = self.walk_module(v, prefix, depth + 1, walk);
                    prefix.truncate(len);
                    result?;
                }
                // Plain attributes (`training`, `_is_full_backward_hook`, ...) are not weights.
                _ => {}
            }
        }
        Ok(())
    }

    fn push_tensor(&self, name: String, spec: &TensorSpec, walk: &mut Walk) -> Result<()> {
        if name.len() > MAX_NAME_LEN {
            return Err(Self::limit("length of a tensor name", MAX_NAME_LEN));
        }
        if walk.out.len() >= MAX_TENSORS {
            return Err(Self::limit("number of tensors", MAX_TENSORS));
        }
        let Some(Obj::Storage(storage)) = self.objs.get(spec.storage) else {
            return Err(PickleError::Structure {
                path: name,
                detail: "tensor without a storage".into(),
            });
        };
        if !walk.names.insert(name.clone()) {
            return Err(PickleError::Structure {
                path: name,
                detail: "two tensors have this name".into(),
            });
        }
        walk.out.push(PickledTensor {
            name,
            storage: storage.clone(),
            offset: spec.offset,
            size: spec.size.clone(),
            stride: spec.stride.clone(),
        });
        Ok(())
    }
}

struct Walk {
    out: Vec<PickledTensor>,
    visits: usize,
    names: HashSet<String>,
}

/// `offset + Σ (size_i - 1) * stride_i` for a tensor with at least one element, or `None` on
/// overflow.
pub(crate) fn last_index(offset: u64, size: &[u64], stride: &[u64]) -> Option<u64> {
    size.iter().zip(stride).try_fold(offset, |acc, (&s, &st)| {
        acc.checked_add(s.checked_sub(1)?.checked_mul(st)?)
    })
}
