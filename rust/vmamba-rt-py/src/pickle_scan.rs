//! A pre-scan of a pickle's opcodes, run before Python's unpickler sees the bytes.
//!
//! Python's C unpickler trusts its input in ways that a hostile file can turn
//! against the process: it grows its memo table to whatever index a PUT names,
//! builds objects nested as deep as the file likes (hashing or printing them
//! later recurses in C and overflows the stack), and runs as long as there are
//! opcodes. This walk reads every opcode and its argument without building
//! anything, keeps a shadow stack that records only how deeply each value is
//! nested, and refuses a pickle that
//!
//! - nests values deeper than `max_depth` (containers, calls, marks);
//! - has more than `max_ops` opcodes (each can create an object);
//! - names a memo slot past the number of slots stored so far, or reads an empty one;
//! - holds bytes after its STOP, uses out-of-band buffers, or is malformed.
//!
//! It runs in linear time over the bytes. What the globals are is the reader's
//! business (`checkpoint.py` allows a fixed table); this scan is about size.

/// Why a pickle was refused, with the byte offset of the opcode at fault.
#[derive(Debug)]
pub struct Refusal {
    pub pos: usize,
    pub why: String,
}

type Scan<T> = Result<T, Refusal>;

struct Walker<'a> {
    data: &'a [u8],
    pos: usize,
    /// Position of the opcode being read.
    at: usize,
}

impl<'a> Walker<'a> {
    fn fail<T>(&self, why: impl Into<String>) -> Scan<T> {
        Err(Refusal {
            pos: self.at,
            why: why.into(),
        })
    }

    fn take(&mut self, n: usize) -> Scan<&'a [u8]> {
        match self.pos.checked_add(n) {
            Some(end) if end <= self.data.len() => {
                let s = &self.data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            _ => self.fail("truncated pickle"),
        }
    }

    fn uint(&mut self, n: usize) -> Scan<u64> {
        let b = self.take(n)?;
        Ok(b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | x as u64))
    }

    /// A newline-terminated argument of at most `max` bytes.
    fn line(&mut self, max: usize) -> Scan<&'a [u8]> {
        let rest = &self.data[self.pos..];
        match rest.iter().take(max + 1).position(|&b| b == b'\n') {
            Some(n) => {
                self.pos += n + 1;
                Ok(&rest[..n])
            }
            None => self.fail(format!(
                "text argument longer than {max} bytes or unterminated"
            )),
        }
    }

    /// Skip a length-prefixed argument whose length takes `n` bytes.
    fn counted(&mut self, n: usize) -> Scan<()> {
        let len = self.uint(n)?;
        match usize::try_from(len) {
            Ok(len) => self.take(len).map(|_| ()),
            Err(_) => self.fail("argument length past the end"),
        }
    }
}

/// The shadow stack: the nesting depth of each value, and the marks.
struct Shadow {
    stack: Vec<u32>,
    marks: Vec<usize>,
    /// Depth of each memo slot; picklers number slots 0, 1, 2, ... in order.
    memo: Vec<u32>,
    max_depth: u32,
}

impl Shadow {
    fn push(&mut self, w: &Walker, depth: u32) -> Scan<()> {
        if depth > self.max_depth {
            return w.fail(format!(
                "values nested deeper than {} levels",
                self.max_depth
            ));
        }
        self.stack.push(depth);
        Ok(())
    }

    fn pop(&mut self, w: &Walker) -> Scan<u32> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return w.fail("stack underflow");
        }
        Ok(self.stack.pop().expect("checked"))
    }

    /// Pop everything above the last mark; the deepest of them.
    fn pop_mark(&mut self, w: &Walker) -> Scan<u32> {
        let Some(m) = self.marks.pop() else {
            return w.fail("no MARK to pop to");
        };
        let deepest = self.stack[m..].iter().copied().max().unwrap_or(0);
        self.stack.truncate(m);
        Ok(deepest)
    }

    fn top(&mut self, w: &Walker) -> Scan<&mut u32> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return w.fail("stack underflow");
        }
        Ok(self.stack.last_mut().expect("checked"))
    }

    /// Store `child` into the container on top of the stack.
    fn nest_into_top(&mut self, w: &Walker, child: u32) -> Scan<()> {
        let max = self.max_depth;
        let top = self.top(w)?;
        *top = (*top).max(child + 1);
        if *top > max {
            return w.fail(format!("values nested deeper than {max} levels"));
        }
        Ok(())
    }

    fn put(&mut self, w: &Walker, idx: u64) -> Scan<()> {
        // Picklers number memo slots 0, 1, 2, ... in order; the C unpickler
        // allocates a table as large as the index, so a far index is a bomb.
        if idx > self.memo.len() as u64 {
            return w.fail(format!(
                "memo index {idx} is out of range (only {} stored so far)",
                self.memo.len()
            ));
        }
        let d = *self.top(w)?;
        match self.memo.get_mut(idx as usize) {
            Some(slot) => *slot = d,
            None => self.memo.push(d),
        }
        Ok(())
    }

    fn get(&mut self, w: &Walker, idx: u64) -> Scan<()> {
        match usize::try_from(idx).ok().and_then(|i| self.memo.get(i)) {
            Some(&d) => self.push(w, d),
            None => w.fail(format!("memo index {idx} read before it was stored")),
        }
    }
}

fn text_int(w: &Walker, s: &[u8]) -> Scan<u64> {
    match std::str::from_utf8(s)
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
    {
        Some(v) => Ok(v),
        None => w.fail("malformed memo index"),
    }
}

/// Walk `data`; `Ok(count of opcodes)` when it is within the limits.
pub fn scan(data: &[u8], max_depth: u32, max_ops: usize) -> Scan<usize> {
    let mut w = Walker {
        data,
        pos: 0,
        at: 0,
    };
    let mut sh = Shadow {
        stack: Vec::new(),
        marks: Vec::new(),
        memo: Vec::new(),
        max_depth,
    };
    let mut ops = 0usize;
    loop {
        w.at = w.pos;
        let Some(&op) = data.get(w.pos) else {
            return w.fail("no STOP opcode: truncated pickle");
        };
        w.pos += 1;
        ops += 1;
        if ops > max_ops {
            return w.fail(format!("more than {max_ops} opcodes"));
        }
        match op {
            // STOP: the one value left is the result; nothing may follow.
            b'.' => {
                sh.pop(&w)?;
                if w.pos != data.len() {
                    return w.fail(format!(
                        "{} bytes after the STOP opcode",
                        data.len() - w.pos
                    ));
                }
                return Ok(ops);
            }
            // PROTO, FRAME: framing only.
            0x80 => {
                let v = w.uint(1)?;
                if v > 5 {
                    return w.fail(format!("unknown pickle protocol {v}"));
                }
            }
            0x95 => {
                w.uint(8)?;
            }
            // Scalars: push a value of depth 1.
            b'N' | 0x88 | 0x89 => sh.push(&w, 1)?,
            b'K' => sh.push(&w, 1).and(w.take(1).map(|_| ()))?,
            b'M' => sh.push(&w, 1).and(w.take(2).map(|_| ()))?,
            b'J' => sh.push(&w, 1).and(w.take(4).map(|_| ()))?,
            b'G' => sh.push(&w, 1).and(w.take(8).map(|_| ()))?,
            // Text numbers: short, so that int() never sees thousands of digits.
            b'I' | b'L' | b'F' => {
                w.line(64)?;
                sh.push(&w, 1)?;
            }
            0x8a => {
                w.counted(1)?;
                sh.push(&w, 1)?;
            }
            0x8b => {
                let n = w.uint(4)?;
                if n > 64 {
                    return w.fail(format!("integer of {n} bytes"));
                }
                w.take(n as usize)?;
                sh.push(&w, 1)?;
            }
            // Strings and bytes.
            b'S' | b'V' => {
                w.line(data.len())?;
                sh.push(&w, 1)?;
            }
            b'U' | b'C' | 0x8c => {
                w.counted(1)?;
                sh.push(&w, 1)?;
            }
            b'T' | b'X' | b'B' => {
                w.counted(4)?;
                sh.push(&w, 1)?;
            }
            0x8d | 0x8e | 0x96 => {
                w.counted(8)?;
                sh.push(&w, 1)?;
            }
            0x97 | 0x98 => return w.fail("out-of-band buffers are not supported"),
            // Empty containers.
            b')' | b']' | b'}' | 0x8f => sh.push(&w, 1)?,
            // Globals: looked up by the reader's table, depth 1 here.
            b'c' => {
                w.line(1024)?;
                w.line(1024)?;
                sh.push(&w, 1)?;
            }
            0x93 => {
                let a = sh.pop(&w)?;
                let b = sh.pop(&w)?;
                sh.push(&w, a.max(b))?;
            }
            0x82 => sh.push(&w, 1).and(w.take(1).map(|_| ()))?,
            0x83 => sh.push(&w, 1).and(w.take(2).map(|_| ()))?,
            0x84 => sh.push(&w, 1).and(w.take(4).map(|_| ()))?,
            // Persistent ids: the record becomes the loaded object.
            b'P' => {
                w.line(1024)?;
                sh.push(&w, 1)?;
            }
            b'Q' => {
                let d = sh.pop(&w)?;
                sh.push(&w, d + 1)?;
            }
            // Stack manipulation.
            b'(' => {
                if sh.marks.len() as u32 >= max_depth {
                    return w.fail(format!("MARKs nested deeper than {max_depth} levels"));
                }
                sh.marks.push(sh.stack.len());
            }
            b'0' => {
                sh.pop(&w)?;
            }
            b'1' => {
                sh.pop_mark(&w)?;
            }
            b'2' => {
                let d = *sh.top(&w)?;
                sh.push(&w, d)?;
            }
            // Containers from the stack.
            b't' | b'l' | b'd' | 0x91 => {
                let d = sh.pop_mark(&w)?;
                sh.push(&w, d + 1)?;
            }
            0x85..=0x87 => {
                let mut d = 0;
                for _ in 0..(op - 0x84) {
                    d = d.max(sh.pop(&w)?);
                }
                sh.push(&w, d + 1)?;
            }
            b'a' => {
                let v = sh.pop(&w)?;
                sh.nest_into_top(&w, v)?;
            }
            b's' => {
                let v = sh.pop(&w)?;
                let k = sh.pop(&w)?;
                sh.nest_into_top(&w, k.max(v))?;
            }
            b'e' | b'u' | 0x90 => {
                let d = sh.pop_mark(&w)?;
                sh.nest_into_top(&w, d)?;
            }
            // Calls: the result may hold its arguments.
            b'R' | 0x81 => {
                let args = sh.pop(&w)?;
                let f = sh.pop(&w)?;
                sh.push(&w, f.max(args) + 1)?;
            }
            0x92 => {
                let kw = sh.pop(&w)?;
                let args = sh.pop(&w)?;
                let f = sh.pop(&w)?;
                sh.push(&w, f.max(args).max(kw) + 1)?;
            }
            b'o' => {
                let d = sh.pop_mark(&w)?;
                sh.push(&w, d + 1)?;
            }
            b'i' => {
                w.line(1024)?;
                w.line(1024)?;
                let d = sh.pop_mark(&w)?;
                sh.push(&w, d + 1)?;
            }
            b'b' => {
                let state = sh.pop(&w)?;
                sh.nest_into_top(&w, state)?;
            }
            // Memo: PUT, BINPUT, LONG_BINPUT, MEMOIZE; GET, BINGET, LONG_BINGET.
            b'p' | b'q' | b'r' | 0x94 | b'g' | b'h' | b'j' => {
                let idx = match op {
                    b'p' | b'g' => {
                        let s = w.line(32)?;
                        text_int(&w, s)?
                    }
                    b'q' | b'h' => w.uint(1)?,
                    b'r' | b'j' => w.uint(4)?,
                    _ => sh.memo.len() as u64,
                };
                if matches!(op, b'g' | b'h' | b'j') {
                    sh.get(&w, idx)?;
                } else {
                    sh.put(&w, idx)?;
                }
            }
            other => return w.fail(format!("unknown opcode 0x{other:02x}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(data: &[u8]) -> Result<usize, String> {
        scan(data, 100, 1000).map_err(|r| format!("{} at byte {}", r.why, r.pos))
    }

    #[test]
    fn plain_pickles_pass() {
        // {'a': [1, (2, 3)]} at protocol 2, with memo puts.
        let p = b"\x80\x02}q\x00X\x01\x00\x00\x00aq\x01]q\x02(K\x01K\x02K\x03\x86q\x03es.";
        assert!(check(p).is_ok(), "{:?}", check(p));
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut p = b"\x80\x02N".to_vec();
        p.extend(std::iter::repeat_n(0x85u8, 200_000));
        p.push(b'.');
        assert!(check(&p).unwrap_err().contains("nested deeper"));
        let mut m = b"\x80\x02".to_vec();
        m.extend(std::iter::repeat_n(b'(', 200));
        assert!(check(&m).unwrap_err().contains("MARKs nested"));
        // Depth carried through the memo is counted too.
        let mut q = b"\x80\x02N".to_vec();
        for _ in 0..150 {
            q.extend(b"\x85q\x00\x30h\x00");
        }
        q.push(b'.');
        assert!(check(&q).unwrap_err().contains("nested deeper"));
    }

    #[test]
    fn memo_bombs_trailing_bytes_and_op_floods_are_refused() {
        assert!(check(b"\x80\x02}r\xff\xff\xff\x7f.")
            .unwrap_err()
            .contains("memo index 2147483647"));
        assert!(check(b"\x80\x02}h\x05.")
            .unwrap_err()
            .contains("read before"));
        assert!(check(b"\x80\x02N.junk")
            .unwrap_err()
            .contains("after the STOP"));
        let flood = [b"\x80\x02".as_slice(), &[b'N'; 2000], b"."].concat();
        assert!(check(&flood)
            .unwrap_err()
            .contains("more than 1000 opcodes"));
        assert!(check(b"\x80\x02N").unwrap_err().contains("no STOP"));
        assert!(check(b"\x80\x02X\xff\xff\xff\x7f.")
            .unwrap_err()
            .contains("truncated"));
        assert!(check(b"\x80\x02\x8b\x00\x00\x01\x00")
            .unwrap_err()
            .contains("integer of"));
    }
}
