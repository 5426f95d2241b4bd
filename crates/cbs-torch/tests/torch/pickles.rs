//! Hand-assembled pickles for the hostile cases.

/// Pickle bytes, built opcode by opcode.
#[derive(Default)]
pub struct P(pub Vec<u8>);

impl P {
    pub fn proto2() -> Self {
        P(vec![0x80, 2])
    }
    pub fn op(mut self, b: u8) -> Self {
        self.0.push(b);
        self
    }
    pub fn ops(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    pub fn global(mut self, module: &str, name: &str) -> Self {
        self.0.push(b'c');
        self.0
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
        self
    }
    pub fn str(mut self, s: &str) -> Self {
        self.0.push(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    pub fn int(mut self, v: i64) -> Self {
        self.0.extend_from_slice(&[0x8a, 8]);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn ints(self, v: &[i64]) -> Self {
        let mut p = self.op(b'(');
        for &x in v {
            p = p.int(x);
        }
        p.op(b't')
    }
    /// `('storage', torch.FloatStorage, key, 'cpu', numel)` as a persistent id.
    pub fn storage(self, key: &str, numel: i64) -> Self {
        self.op(b'(')
            .str("storage")
            .global("torch", "FloatStorage")
            .str(key)
            .str("cpu")
            .int(numel)
            .op(b't')
            .op(b'Q')
    }
    /// `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`.
    pub fn tensor(self, key: &str, numel: i64, offset: i64, size: &[i64], stride: &[i64]) -> Self {
        self.global("torch._utils", "_rebuild_tensor_v2")
            .op(b'(')
            .storage(key, numel)
            .int(offset)
            .ints(size)
            .ints(stride)
            .op(0x89)
            .global("collections", "OrderedDict")
            .op(b')')
            .op(b'R')
            .op(b't')
            .op(b'R')
    }
    /// `{name: <what the closure pushes>}`.
    pub fn dict1(self, name: &str, value: impl FnOnce(P) -> P) -> Self {
        value(self.op(b'}').str(name)).op(b's')
    }
    pub fn stop(self) -> Vec<u8> {
        self.op(b'.').0
    }
}
