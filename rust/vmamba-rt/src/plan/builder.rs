//! Building a plan: buffers laid out in arenas (first fit), ops pushed in order.

use super::*;

/// Records ops while the model code walks the network (see `model/`).
#[derive(Debug)]
pub struct Builder {
    ops: Vec<Op>,
    buffers: Vec<Buffer>,
}

impl Builder {
    /// A plan for an input of `shape`; its input is buffer 0.
    pub fn new(shape: [usize; 4]) -> Self {
        let mut b = Builder {
            ops: Vec::new(),
            buffers: Vec::new(),
        };
        b.add(
            shape.iter().product(),
            DType::F32,
            Role::Input,
            shape.to_vec(),
        );
        b
    }

    fn add(&mut self, len: usize, dtype: DType, role: Role, shape: Vec<usize>) -> BufId {
        self.buffers.push(Buffer {
            len,
            dtype,
            role,
            shape,
            offset: 0,
            first: usize::MAX,
            last: 0,
        });
        self.buffers.len() - 1
    }

    /// A new intermediate buffer of `len` elements.
    pub fn work(&mut self, len: usize, dtype: DType) -> BufId {
        self.add(len, dtype, Role::Work, vec![len])
    }

    /// A new output buffer (f32) of `shape`.
    pub fn output(&mut self, shape: Vec<usize>) -> BufId {
        self.add(shape.iter().product(), DType::F32, Role::Output, shape)
    }

    /// Append an op.
    pub fn push(&mut self, op: Op) {
        debug_assert!(!op.aliases(), "an op reads the buffer it writes: {op:?}");
        self.ops.push(op);
    }

    /// Fuse the ops (`fuse`), place the work buffers (first fit by lifetime,
    /// per dtype) and finish. A buffer that fusion left untouched takes no space.
    pub fn finish(mut self, outputs: Outputs) -> Plan {
        self.ops = super::fuse::fuse(std::mem::take(&mut self.ops), &self.buffers);
        for (at, op) in self.ops.iter().enumerate() {
            for id in op.buffers() {
                let b = &mut self.buffers[id];
                b.first = b.first.min(at);
                b.last = at;
            }
        }
        let mut arena = [0usize; 2];
        for (slot, dtype) in [DType::Act, DType::F32].into_iter().enumerate() {
            let mut ids: Vec<BufId> = (0..self.buffers.len())
                .filter(|&i| {
                    let b = &self.buffers[i];
                    b.role == Role::Work && b.dtype == dtype && b.first != usize::MAX
                })
                .collect();
            ids.sort_by_key(|&i| self.buffers[i].first);
            // (offset, len, last use) of the buffers placed so far.
            let mut placed: Vec<(usize, usize, usize)> = Vec::new();
            for id in ids {
                let (first, len) = (self.buffers[id].first, self.buffers[id].len);
                let mut live: Vec<(usize, usize)> = placed
                    .iter()
                    .filter(|p| p.2 >= first)
                    .map(|p| (p.0, p.0 + p.1))
                    .collect();
                live.sort_unstable();
                let mut offset = 0;
                for (start, end) in live {
                    if start >= offset + len {
                        break;
                    }
                    offset = offset.max(end);
                }
                self.buffers[id].offset = offset;
                placed.push((offset, len, self.buffers[id].last));
                arena[slot] = arena[slot].max(offset + len);
            }
        }
        Plan {
            input_shape: self.buffers[0].shape.clone().try_into().expect("4 dims"),
            outputs,
            ops: self.ops,
            buffers: self.buffers,
            arena,
        }
    }
}
