//! Reads a batch of `gpu.samples.v1` messages (JSON objects joined by newlines) straight into
//! Arrow column buffers, for `gpuledger.batch_decode`.
//!
//! Why: Arrow's JSON reader is most of ingest's CPU (~53 us of ~80 per message). This reader
//! knows the message's nesting (message -> gpus/slices/processes, slice -> workload -> labels)
//! and takes field names and types from Python, which compiles them from the JSON Schema.
//!
//! It decides nothing about validity: it either reads every message to plain typed values or
//! gives up on the whole batch (returns None), and Python then checks every schema and
//! semantic rule on the columns, or hands the batch to the exact decoder. It gives up on
//! anything unusual: unknown or duplicate keys, a value of another JSON type than the field's,
//! a fraction or exponent in an integer field, an integer outside i64, a number that is not
//! finite as f64, a raw control byte or a lone surrogate escape in a string, a missing or null
//! list.

use std::borrow::Cow;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

#[derive(Clone, Copy, PartialEq, Debug)]
enum Ty {
    Str,
    Int,
    Float,
    Bool,
    List(usize),
    Struct(usize),
    Map,
}

/// One Arrow column being built: validity bitmap plus the type's buffers.
#[derive(Clone)]
struct Col {
    ty: Ty,
    n: usize,
    nulls: usize,
    valid: Vec<u8>,
    ints: Vec<i64>,
    floats: Vec<f64>,
    bits: Vec<u8>,
    offsets: Vec<i32>,
    data: Vec<u8>,
    counts: Vec<i32>,             // List: items per row
    map: Option<Box<(Col, Col)>>, // Map: keys and values (entries); offsets index them
}

impl Col {
    fn new(ty: Ty) -> Col {
        let mut c = Col {
            ty,
            n: 0,
            nulls: 0,
            valid: Vec::new(),
            ints: Vec::new(),
            floats: Vec::new(),
            bits: Vec::new(),
            offsets: Vec::new(),
            data: Vec::new(),
            counts: Vec::new(),
            map: None,
        };
        if matches!(ty, Ty::Str | Ty::Map) {
            c.offsets.push(0);
        }
        if ty == Ty::Map {
            c.map = Some(Box::new((Col::new(Ty::Str), Col::new(Ty::Str))));
        }
        c
    }

    #[inline]
    fn mark(&mut self, ok: bool) {
        if self.n % 8 == 0 {
            self.valid.push(0);
        }
        if ok {
            self.valid[self.n / 8] |= 1 << (self.n % 8);
        } else {
            self.nulls += 1;
        }
    }

    fn push_null(&mut self) {
        self.mark(false);
        match self.ty {
            Ty::Int => self.ints.push(0),
            Ty::Float => self.floats.push(0.0),
            Ty::Bool => {
                if self.n % 8 == 0 {
                    self.bits.push(0);
                }
            }
            Ty::Str => self.offsets.push(self.data.len() as i32),
            Ty::Map => {
                let end = self.offsets[self.offsets.len() - 1];
                self.offsets.push(end);
            }
            Ty::List(_) | Ty::Struct(_) => {}
        }
        self.n += 1;
    }

    fn push_str(&mut self, s: &[u8]) -> Result<(), ()> {
        self.mark(true);
        self.data.extend_from_slice(s);
        if self.data.len() > i32::MAX as usize {
            return Err(());
        }
        self.offsets.push(self.data.len() as i32);
        self.n += 1;
        Ok(())
    }

    fn push_int(&mut self, v: i64) {
        self.mark(true);
        self.ints.push(v);
        self.n += 1;
    }

    fn push_float(&mut self, v: f64) {
        self.mark(true);
        self.floats.push(v);
        self.n += 1;
    }

    fn push_bool(&mut self, v: bool) {
        self.mark(true);
        if self.n % 8 == 0 {
            self.bits.push(0);
        }
        if v {
            self.bits[self.n / 8] |= 1 << (self.n % 8);
        }
        self.n += 1;
    }
}

/// One object type (message, gpu, slice, workload, process) and its columns.
#[derive(Clone)]
struct Kind {
    name: String,
    names: Vec<Vec<u8>>,
    cols: Vec<Col>,
    owners: Vec<i64>, // row of the parent message (list item kinds)
    rows: usize,
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

type R<T> = Result<T, ()>;

impl<'a> Parser<'a> {
    #[inline]
    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    #[inline]
    fn peek(&self) -> R<u8> {
        self.b.get(self.i).copied().ok_or(())
    }

    #[inline]
    fn eat(&mut self, c: u8) -> R<()> {
        if self.peek()? == c {
            self.i += 1;
            Ok(())
        } else {
            Err(())
        }
    }

    /// A string's bytes (the caller checked the batch is UTF-8). Escapes are decoded; a raw
    /// control byte or a lone surrogate escape gives up.
    #[inline]
    fn string(&mut self) -> R<Cow<'a, [u8]>> {
        self.eat(b'"')?;
        let start = self.i;
        let b = self.b;
        while self.i < b.len() {
            let c = b[self.i];
            if c == b'"' {
                let s = &b[start..self.i];
                self.i += 1;
                return Ok(Cow::Borrowed(s));
            }
            if c == b'\\' {
                let mut out = b[start..self.i].to_vec();
                return self.escaped(&mut out).map(|_| Cow::Owned(out));
            }
            if c < 0x20 {
                return Err(());
            }
            self.i += 1;
        }
        Err(())
    }

    fn hex4(&mut self) -> R<u32> {
        let b = self.b;
        if b.len() - self.i < 4 {
            return Err(());
        }
        let mut v = 0u32;
        for k in 0..4 {
            let d = (b[self.i + k] as char).to_digit(16).ok_or(())?;
            v = v * 16 + d;
        }
        self.i += 4;
        Ok(v)
    }

    fn escaped(&mut self, out: &mut Vec<u8>) -> R<()> {
        let b = self.b;
        while self.i < b.len() {
            let c = b[self.i];
            self.i += 1;
            match c {
                b'"' => return Ok(()),
                b'\\' => {
                    let e = *b.get(self.i).ok_or(())?;
                    self.i += 1;
                    match e {
                        b'"' => out.push(b'"'),
                        b'\\' => out.push(b'\\'),
                        b'/' => out.push(b'/'),
                        b'b' => out.push(0x08),
                        b'f' => out.push(0x0c),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let cp = if (0xD800..0xDC00).contains(&hi) {
                                if self.b.get(self.i) != Some(&b'\\')
                                    || self.b.get(self.i + 1) != Some(&b'u')
                                {
                                    return Err(());
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(());
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else if (0xDC00..0xE000).contains(&hi) {
                                return Err(());
                            } else {
                                hi
                            };
                            let ch = char::from_u32(cp).ok_or(())?;
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        }
                        _ => return Err(()),
                    }
                }
                c if c < 0x20 => return Err(()),
                c => out.push(c),
            }
        }
        Err(())
    }

    /// A JSON number's text (strict grammar) and whether it is an integer literal.
    fn number(&mut self) -> R<(&'a str, bool)> {
        let b = self.b;
        let start = self.i;
        if self.peek()? == b'-' {
            self.i += 1;
        }
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => {
                while self.i < b.len() && b[self.i].is_ascii_digit() {
                    self.i += 1;
                }
            }
            _ => return Err(()),
        }
        let mut int = true;
        if self.i < b.len() && b[self.i] == b'.' {
            int = false;
            self.i += 1;
            let d = self.i;
            while self.i < b.len() && b[self.i].is_ascii_digit() {
                self.i += 1;
            }
            if self.i == d {
                return Err(());
            }
        }
        if self.i < b.len() && (b[self.i] == b'e' || b[self.i] == b'E') {
            int = false;
            self.i += 1;
            if self.i < b.len() && (b[self.i] == b'+' || b[self.i] == b'-') {
                self.i += 1;
            }
            let d = self.i;
            while self.i < b.len() && b[self.i].is_ascii_digit() {
                self.i += 1;
            }
            if self.i == d {
                return Err(());
            }
        }
        // ASCII by construction
        let text = std::str::from_utf8(&b[start..self.i]).map_err(|_| ())?;
        Ok((text, int))
    }

    /// After a member or item: true at a comma (and the whitespace after it), false at `close`
    /// (consumed), an error at anything else.
    #[inline]
    fn more(&mut self, close: u8) -> R<bool> {
        self.ws();
        let c = self.peek()?;
        self.i += 1;
        if c == b',' {
            self.ws();
            Ok(true)
        } else if c == close {
            Ok(false)
        } else {
            Err(())
        }
    }

    fn word(&mut self, w: &[u8]) -> R<()> {
        if self.b.len() - self.i >= w.len() && &self.b[self.i..self.i + w.len()] == w {
            self.i += w.len();
            Ok(())
        } else {
            Err(())
        }
    }
}

struct Reader {
    kinds: Vec<Kind>,
}

impl Reader {
    fn field(&self, kind: usize, key: &[u8], hint: usize) -> Option<usize> {
        let names = &self.kinds[kind].names;
        if hint < names.len() && names[hint] == key {
            return Some(hint);
        }
        names.iter().position(|n| n == key)
    }

    fn null_row(&mut self, kind: usize) -> R<()> {
        for f in 0..self.kinds[kind].cols.len() {
            match self.kinds[kind].cols[f].ty {
                Ty::List(_) => return Err(()),
                Ty::Struct(child) => self.null_row(child)?,
                _ => self.kinds[kind].cols[f].push_null(),
            }
        }
        self.kinds[kind].rows += 1;
        Ok(())
    }

    fn object(&mut self, p: &mut Parser, kind: usize) -> R<()> {
        p.eat(b'{')?;
        p.ws();
        let nf = self.kinds[kind].names.len();
        let mut seen: u64 = 0;
        let mut hint = 0usize;
        if p.peek()? == b'}' {
            p.i += 1;
        } else {
            loop {
                let key = p.string()?;
                let f = self.field(kind, &key, hint).ok_or(())?;
                if seen & (1u64 << f) != 0 {
                    return Err(()); // duplicate key
                }
                seen |= 1u64 << f;
                hint = f + 1;
                p.ws();
                p.eat(b':')?;
                p.ws();
                self.value(p, kind, f)?;
                if !p.more(b'}')? {
                    break;
                }
            }
        }
        for f in 0..nf {
            if seen & (1u64 << f) == 0 {
                match self.kinds[kind].cols[f].ty {
                    Ty::List(_) => return Err(()),
                    Ty::Struct(child) => self.null_row(child)?,
                    _ => self.kinds[kind].cols[f].push_null(),
                }
            }
        }
        self.kinds[kind].rows += 1;
        Ok(())
    }

    fn value(&mut self, p: &mut Parser, kind: usize, f: usize) -> R<()> {
        let ty = self.kinds[kind].cols[f].ty;
        let c = p.peek()?;
        if c == b'n' {
            p.word(b"null")?;
            return match ty {
                Ty::List(_) => Err(()),
                Ty::Struct(child) => self.null_row(child),
                _ => {
                    self.kinds[kind].cols[f].push_null();
                    Ok(())
                }
            };
        }
        match ty {
            Ty::Str => {
                let s = p.string()?;
                self.kinds[kind].cols[f].push_str(&s)
            }
            Ty::Int => {
                let (text, int) = p.number()?;
                if !int {
                    return Err(());
                }
                let v: i64 = text.parse().map_err(|_| ())?;
                self.kinds[kind].cols[f].push_int(v);
                Ok(())
            }
            Ty::Float => {
                let (text, _) = p.number()?;
                let v: f64 = text.parse().map_err(|_| ())?;
                if !v.is_finite() {
                    return Err(());
                }
                self.kinds[kind].cols[f].push_float(v);
                Ok(())
            }
            Ty::Bool => {
                let v = if c == b't' {
                    p.word(b"true")?;
                    true
                } else {
                    p.word(b"false")?;
                    false
                };
                self.kinds[kind].cols[f].push_bool(v);
                Ok(())
            }
            Ty::List(child) => {
                p.eat(b'[')?;
                p.ws();
                let owner = self.kinds[kind].rows as i64;
                let mut count: i32 = 0;
                if p.peek()? == b']' {
                    p.i += 1;
                } else {
                    loop {
                        self.object(p, child)?;
                        self.kinds[child].owners.push(owner);
                        count += 1;
                        if !p.more(b']')? {
                            break;
                        }
                    }
                }
                let col = &mut self.kinds[kind].cols[f];
                col.counts.push(count);
                col.mark(true);
                col.n += 1;
                Ok(())
            }
            Ty::Struct(child) => self.object(p, child),
            Ty::Map => {
                p.eat(b'{')?;
                p.ws();
                let col = &mut self.kinds[kind].cols[f];
                let entries = col.map.as_mut().ok_or(())?;
                let first = entries.0.n;
                if p.peek()? == b'}' {
                    p.i += 1;
                } else {
                    loop {
                        let k = p.string()?;
                        // duplicate keys: the exact decoder decides what they mean
                        let (keys, _) = &**entries;
                        for e in first..keys.n {
                            let (a, z) = (keys.offsets[e] as usize, keys.offsets[e + 1] as usize);
                            if keys.data[a..z] == *k {
                                return Err(());
                            }
                        }
                        p.ws();
                        p.eat(b':')?;
                        p.ws();
                        let v = p.string()?;
                        entries.0.push_str(&k)?;
                        entries.1.push_str(&v)?;
                        if !p.more(b'}')? {
                            break;
                        }
                    }
                }
                let end = entries.0.n as i32;
                col.offsets.push(end);
                col.mark(true);
                col.n += 1;
                Ok(())
            }
        }
    }

    fn read(&mut self, blob: &[u8], ends: &[usize]) -> R<()> {
        let mut start = 0usize;
        for &end in ends {
            if end < start || end > blob.len() {
                return Err(());
            }
            let mut p = Parser {
                b: &blob[start..end],
                i: 0,
            };
            p.ws();
            self.object(&mut p, 0)?;
            p.ws();
            if p.i != p.b.len() {
                return Err(());
            }
            start = end + 1;
        }
        Ok(())
    }
}

fn bytes_of<T>(v: &[T]) -> &[u8] {
    // Arrow's buffers are native-endian plain arrays of these types
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

fn col_tuple<'py>(py: Python<'py>, c: &Col) -> PyResult<Bound<'py, PyTuple>> {
    let valid = if c.nulls > 0 {
        PyBytes::new(py, &c.valid).into_any()
    } else {
        py.None().into_bound(py)
    };
    let (data, offsets) = match c.ty {
        Ty::Int => (PyBytes::new(py, bytes_of(&c.ints)), None),
        Ty::Float => (PyBytes::new(py, bytes_of(&c.floats)), None),
        Ty::Bool => (PyBytes::new(py, &c.bits), None),
        Ty::Str => (
            PyBytes::new(py, &c.data),
            Some(PyBytes::new(py, bytes_of(&c.offsets))),
        ),
        Ty::List(_) => (PyBytes::new(py, bytes_of(&c.counts)), None),
        Ty::Map => (
            PyBytes::new(py, b""),
            Some(PyBytes::new(py, bytes_of(&c.offsets))),
        ),
        Ty::Struct(_) => (PyBytes::new(py, b""), None),
    };
    let offsets = match offsets {
        Some(o) => o.into_any(),
        None => py.None().into_bound(py),
    };
    let items = match (&c.map, c.ty) {
        (Some(m), Ty::Map) => {
            PyTuple::new(py, [col_tuple(py, &m.0)?, col_tuple(py, &m.1)?])?.into_any()
        }
        _ => py.None().into_bound(py),
    };
    PyTuple::new(
        py,
        [
            c.n.into_pyobject(py)?.into_any(),
            c.nulls.into_pyobject(py)?.into_any(),
            valid,
            data.into_any(),
            offsets,
            items,
        ],
    )
}

/// A batch reader for one message layout.
///
/// `spec`: a list of (kind, [(field, type)]) with the message kind first; a type is one of
/// "string", "int64", "double", "bool", "map" (string -> string), "list:KIND" or "struct:KIND".
#[pyclass(frozen)]
struct BatchReader {
    template: Vec<Kind>,
}

#[pymethods]
impl BatchReader {
    #[new]
    fn new(spec: Vec<(String, Vec<(String, String)>)>) -> PyResult<Self> {
        let index = |name: &str| spec.iter().position(|(k, _)| k == name);
        let mut kinds = Vec::new();
        for (kname, fields) in &spec {
            if fields.len() > 64 {
                return Err(PyValueError::new_err(format!(
                    "{kname}: more than 64 fields"
                )));
            }
            let mut names = Vec::new();
            let mut cols = Vec::new();
            for (fname, t) in fields {
                let ty = match t.as_str() {
                    "string" => Ty::Str,
                    "int64" => Ty::Int,
                    "double" => Ty::Float,
                    "bool" => Ty::Bool,
                    "map" => Ty::Map,
                    other => {
                        let (how, child) = other.split_once(':').ok_or_else(|| {
                            PyValueError::new_err(format!("{kname}.{fname}: unknown type {other}"))
                        })?;
                        let ci = index(child).ok_or_else(|| {
                            PyValueError::new_err(format!("{kname}.{fname}: no kind {child}"))
                        })?;
                        match how {
                            "list" => Ty::List(ci),
                            "struct" => Ty::Struct(ci),
                            _ => {
                                return Err(PyValueError::new_err(format!(
                                    "{kname}.{fname}: unknown type {other}"
                                )))
                            }
                        }
                    }
                };
                names.push(fname.as_bytes().to_vec());
                cols.push(Col::new(ty));
            }
            kinds.push(Kind {
                name: kname.clone(),
                names,
                cols,
                owners: Vec::new(),
                rows: 0,
            });
        }
        if kinds.is_empty() {
            return Err(PyValueError::new_err("empty spec"));
        }
        Ok(BatchReader { template: kinds })
    }

    /// Columns of every kind as {kind: {"rows": n, "owners": bytes|None, field: tuple}}, or
    /// None when some message is not plainly readable. `ends[i]` is where message i ends in
    /// `blob`; the next one starts one byte (the newline) later.
    fn read<'py>(
        &self,
        py: Python<'py>,
        blob: &[u8],
        ends: Vec<usize>,
    ) -> PyResult<Option<Bound<'py, PyDict>>> {
        let mut r = Reader {
            kinds: self.template.clone(),
        };
        let ok = py.detach(|| r.read(blob, &ends).is_ok());
        if !ok {
            return Ok(None);
        }
        let out = PyDict::new(py);
        for k in &r.kinds {
            let d = PyDict::new(py);
            d.set_item("rows", k.rows)?;
            if k.owners.len() == k.rows && k.rows > 0 {
                d.set_item("owners", PyBytes::new(py, bytes_of(&k.owners)))?;
            } else {
                d.set_item("owners", py.None())?;
            }
            let fields = PyList::empty(py);
            for (name, c) in k.names.iter().zip(&k.cols) {
                let name =
                    std::str::from_utf8(name).map_err(|e| PyValueError::new_err(e.to_string()))?;
                fields.append(name)?;
                d.set_item(name, col_tuple(py, c)?)?;
            }
            out.set_item(&k.name, d)?;
        }
        Ok(Some(out))
    }
}

/// Why a duplicate-key walk stopped early.
enum Dup {
    Key(Vec<u8>), // the first key seen twice in one object (escapes decoded)
    Bad,          // not JSON this walker reads (the caller's decoders decide what it is)
}

impl From<()> for Dup {
    fn from(_: ()) -> Dup {
        Dup::Bad
    }
}

const MAX_DEPTH: u32 = 64; // deeper than any valid message; a hostile nesting cannot exhaust the stack
const LINEAR_KEYS: usize = 32; // objects up to this many keys compare linearly, bigger ones hash

/// Walk one JSON value and stop at the first object that has some key twice.
fn walk_dups(p: &mut Parser, depth: u32) -> Result<(), Dup> {
    if depth > MAX_DEPTH {
        return Err(Dup::Bad);
    }
    p.ws();
    match p.peek()? {
        b'{' => {
            p.i += 1;
            p.ws();
            if p.peek()? == b'}' {
                p.i += 1;
                return Ok(());
            }
            let mut keys: Vec<Cow<[u8]>> = Vec::new();
            let mut big: Option<std::collections::HashSet<Vec<u8>>> = None;
            loop {
                let k = p.string()?;
                let seen = match &mut big {
                    Some(set) => !set.insert(k.to_vec()),
                    None => {
                        let dup = keys.iter().any(|x| *x == k);
                        keys.push(k.clone());
                        if keys.len() > LINEAR_KEYS {
                            big = Some(keys.drain(..).map(|x| x.into_owned()).collect());
                        }
                        dup
                    }
                };
                if seen {
                    return Err(Dup::Key(k.into_owned()));
                }
                p.ws();
                p.eat(b':')?;
                walk_dups(p, depth + 1)?;
                if !p.more(b'}')? {
                    return Ok(());
                }
            }
        }
        b'[' => {
            p.i += 1;
            p.ws();
            if p.peek()? == b']' {
                p.i += 1;
                return Ok(());
            }
            loop {
                walk_dups(p, depth + 1)?;
                if !p.more(b']')? {
                    return Ok(());
                }
            }
        }
        b'"' => p.string().map(|_| ()).map_err(Dup::from),
        b't' => p.word(b"true").map_err(Dup::from),
        b'f' => p.word(b"false").map_err(Dup::from),
        b'n' => p.word(b"null").map_err(Dup::from),
        _ => p.number().map(|_| ()).map_err(Dup::from),
    }
}

/// The first duplicate key of one JSON document: (True, key) when some object has a key twice,
/// (True, None) when none has, (False, None) when the bytes are not JSON this walker reads (then
/// the caller decides another way). Why: JSON parsers disagree on which of two values wins, so a
/// message with a duplicate key means different things to different consumers; ingest rejects it.
#[pyfunction]
fn duplicate_key(py: Python<'_>, raw: &[u8]) -> (bool, Option<String>) {
    py.detach(|| {
        let mut p = Parser { b: raw, i: 0 };
        match walk_dups(&mut p, 0) {
            Ok(()) => {
                p.ws();
                (p.i == raw.len(), None)
            }
            Err(Dup::Key(k)) => (true, Some(String::from_utf8_lossy(&k).into_owned())),
            Err(Dup::Bad) => (false, None),
        }
    })
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<BatchReader>()?;
    m.add_function(wrap_pyfunction!(duplicate_key, m)?)?;
    Ok(())
}
