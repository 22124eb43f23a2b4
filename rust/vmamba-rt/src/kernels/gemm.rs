//! The dense layers' product `out (+)= act(x Wᵀ + bias)`, with W (N, K) packed once,
//! at load, into column panels: panel `p` holds columns `16p..16p+16` of Wᵀ as K
//! rows of 16 values (zero past N), so the inner loop reads one contiguous
//! stream of W and broadcasts one element of x per row. Panels hold f32 or
//! bf16 (the top half of an f32: widened by a shift, accumulated in f32).
//!
//! Threads split the output into blocks of rows x panels (rayon, no packing of
//! x, nothing allocated per call). The bias and activation are applied to each
//! tile while it is in registers: no second pass over the output. The tile
//! kernel is plain Rust over fixed-size arrays, compiled once per instruction
//! set (AVX-512, AVX2+FMA, the portable baseline with NEON on aarch64) and
//! chosen at run time; `gemm_ref` is the plain loop it is tested against.

use rayon::prelude::*;

use super::bf16dot;
use super::simd::{Fma, Fused};
use super::{act, SharedMut};
use crate::memory::{elements, extent};
use crate::variant::Act;

/// Columns per panel: one 512-bit vector, two 256-bit ones, four NEON ones.
pub const NR: usize = 16;

/// How a packed weight stores its values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightType {
    /// IEEE single precision.
    #[default]
    F32,
    /// bfloat16: f32 rounded to 8 bits of mantissa (to nearest, ties to even).
    Bf16,
}

impl WeightType {
    /// By NumPy-style name: "float32" or "bfloat16".
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "float32" => Some(WeightType::F32),
            "bfloat16" => Some(WeightType::Bf16),
            _ => None,
        }
    }
}

/// A bfloat16 value: the upper 16 bits of an f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(transparent)]
pub struct Bf16(pub u16);

impl Bf16 {
    /// Round to nearest, ties to even; NaN stays NaN.
    pub fn from_f32(x: f32) -> Self {
        let bits = x.to_bits();
        if x.is_nan() {
            return Bf16((bits >> 16) as u16 | 0x40);
        }
        let round = 0x7fff + ((bits >> 16) & 1);
        Bf16((bits.wrapping_add(round) >> 16) as u16)
    }

    /// The f32 it stands for (exact).
    #[inline(always)]
    pub fn to_f32(self) -> f32 {
        f32::from_bits((self.0 as u32) << 16)
    }
}

/// An element of a panel, widened to f32 16 at a time.
pub trait PanelElem: Copy + Send + Sync {
    /// Widened to f32.
    fn to_f32(self) -> f32;
    /// The 16 values at `p`.
    ///
    /// # Safety
    /// `p` must be valid for reading 16 elements.
    #[inline(always)]
    unsafe fn load(p: *const Self) -> [f32; NR] {
        let mut v = [0.0; NR];
        for (j, o) in v.iter_mut().enumerate() {
            *o = (*p.add(j)).to_f32();
        }
        v
    }
}

impl PanelElem for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

impl PanelElem for Bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        Bf16::to_f32(self)
    }
}

/// Elements of the panels of an (n, k) weight.
pub fn packed_len(n: usize, k: usize) -> usize {
    n.div_ceil(NR) * NR * k
}

/// A weight W (N, K) in panels, f32 or bf16.
#[derive(Clone)]
pub struct PackedWeight {
    n: usize,
    k: usize,
    panels: Panels,
}

#[derive(Clone)]
enum Panels {
    F32(Vec<f32>),
    /// Widened to f32 in the tiles (activations stay f32).
    Bf16(Vec<Bf16>),
    /// In pairs for the bf16 dot-product instruction (`bf16dot`: activations
    /// rounded to bf16 too).
    Bf16Pairs(Vec<Bf16>),
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedWeight({}x{}, {:?})", self.n, self.k, self.dtype())
    }
}

impl PackedWeight {
    /// Pack a copy of W (n, k), row-major, stored as `dtype`.
    pub fn new(w: &[f32], n: usize, k: usize, dtype: WeightType) -> Self {
        Self::from_vec(w.to_vec(), n, k).to_type(dtype)
    }

    /// Pack W (n, k), row-major, in its own buffer (f32): a panel is 16
    /// consecutive rows of W transposed, so each is re-laid in place through a
    /// copy of that panel alone, and no second copy of W is ever made.
    pub fn from_vec(mut w: Vec<f32>, n: usize, k: usize) -> Self {
        assert_eq!(
            Some(w.len()),
            elements(&[n, k]),
            "pack: weight is not {n}x{k}"
        );
        w.resize(packed_len(n, k), 0.0); // the last panel's missing rows are zeros
        if w.is_empty() {
            // No panels (n or k is 0): nothing to lay out, and no panel buffer of NR * k.
            return PackedWeight {
                n,
                k,
                panels: Panels::F32(w),
            };
        }
        let mut rows = vec![0.0f32; NR * k]; // one panel, as rows of W
        for panel in w.chunks_mut(NR * k.max(1)) {
            rows.copy_from_slice(panel);
            for (kk, out) in panel.chunks_mut(NR).enumerate() {
                for (j, o) in out.iter_mut().enumerate() {
                    *o = rows[j * k + kk];
                }
            }
        }
        PackedWeight {
            n,
            k,
            panels: Panels::F32(w),
        }
    }

    /// (N, K).
    pub fn shape(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// How the values are stored.
    pub fn dtype(&self) -> WeightType {
        match self.panels {
            Panels::F32(_) => WeightType::F32,
            Panels::Bf16(_) | Panels::Bf16Pairs(_) => WeightType::Bf16,
        }
    }

    /// True when the product runs in bf16 arithmetic (`bf16dot`): a bf16 weight
    /// on a CPU with AVX512_BF16.
    pub fn bf16_arithmetic(&self) -> bool {
        matches!(self.panels, Panels::Bf16Pairs(_))
    }

    /// The same weight stored as `to` (nothing is copied when it is stored so
    /// already). bf16 runs in bf16 arithmetic where [`bf16dot::available`] says
    /// so, else widened to f32 in the tiles.
    pub fn to_type(self, to: WeightType) -> Self {
        let dot = to == WeightType::Bf16 && bf16dot::available();
        self.to_layout(to, dot)
    }

    /// [`Self::to_type`] with the bf16 kernel named: `bf16_arithmetic` packs a
    /// bf16 weight for `bf16dot` (which runs anywhere, vectorised only with
    /// AVX512_BF16), else for the f32-widening tiles.
    pub fn to_layout(self, to: WeightType, bf16_arithmetic: bool) -> Self {
        let pairs = to == WeightType::Bf16 && bf16_arithmetic;
        let already = match self.panels {
            Panels::F32(_) => to == WeightType::F32,
            Panels::Bf16(_) => to == WeightType::Bf16 && !pairs,
            Panels::Bf16Pairs(_) => pairs,
        };
        if already {
            return self;
        }
        // Any other change goes through the f32 panels.
        let (n, k) = (self.n, self.k);
        let f32_panels = match self.panels {
            Panels::F32(p) => p,
            Panels::Bf16(p) => p.iter().map(|v| v.to_f32()).collect(),
            Panels::Bf16Pairs(p) => {
                PackedWeight::from_vec(bf16dot::unpack(&p, n, k), n, k).f32_panels()
            }
        };
        let panels = match to {
            WeightType::F32 => Panels::F32(f32_panels),
            WeightType::Bf16 if pairs => Panels::Bf16Pairs(bf16dot::pack(&f32_panels, n, k)),
            WeightType::Bf16 => {
                Panels::Bf16(f32_panels.iter().map(|&v| Bf16::from_f32(v)).collect())
            }
        };
        PackedWeight { n, k, panels }
    }

    /// W back as (N, K) row-major f32 (bf16 values widened).
    pub fn unpack(&self) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        if let Panels::Bf16Pairs(p) = &self.panels {
            return bf16dot::unpack(p, n, k);
        }
        let at = |i: usize| match &self.panels {
            Panels::F32(p) => p[i],
            Panels::Bf16(p) => p[i].to_f32(),
            Panels::Bf16Pairs(_) => unreachable!("returned above"),
        };
        let mut w = vec![0.0; n * k];
        for col in 0..n {
            for kk in 0..k {
                w[col * k + kk] = at((col / NR) * NR * k + kk * NR + col % NR);
            }
        }
        w
    }

    /// The f32 panels of an f32 weight (what the other layouts are made from).
    pub(crate) fn f32_panels(self) -> Vec<f32> {
        match self.panels {
            Panels::F32(p) => p,
            _ => panic!("not an f32 weight"),
        }
    }

    /// `out (m, N) (+)= act(x (m, K) Wᵀ + bias)`, on the current rayon pool.
    pub fn apply(&self, x: &[f32], m: usize, ep: Epilogue, out: &mut [f32], accumulate: bool) {
        let a = Lhs {
            data: x,
            rows: m,
            stride: self.k,
        };
        let o = Out {
            data: out,
            stride: self.n,
            accumulate,
        };
        match &self.panels {
            Panels::F32(p) => gemm(a, p, self.n, self.k, ep, o),
            Panels::Bf16(p) => gemm(a, p, self.n, self.k, ep, o),
            Panels::Bf16Pairs(p) => bf16dot::gemm(a, p, self.n, self.k, ep, o),
        }
    }
}

/// The left operand: `rows` rows of `stride` elements (the first K used).
#[derive(Clone, Copy, Debug)]
pub struct Lhs<'a> {
    /// The elements.
    pub data: &'a [f32],
    /// Rows (M).
    pub rows: usize,
    /// Elements from one row to the next.
    pub stride: usize,
}

/// The destination: rows of `stride` elements (the first N written), overwritten
/// or, with `accumulate`, added to.
#[derive(Debug)]
pub struct Out<'a> {
    /// The elements.
    pub data: &'a mut [f32],
    /// Elements from one row to the next.
    pub stride: usize,
    /// Add to what `data` holds instead of overwriting it.
    pub accumulate: bool,
}

/// What is applied to each product before it is stored: `act(product + bias)`.
#[derive(Clone, Copy, Debug)]
pub struct Epilogue<'a> {
    /// Added per column (N).
    pub bias: Option<&'a [f32]>,
    /// Applied after the bias.
    pub act: Act,
}

impl Epilogue<'_> {
    /// Nothing: the product itself.
    pub const NONE: Epilogue<'static> = Epilogue {
        bias: None,
        act: Act::None,
    };
}

/// `out (+)= act(a Wᵀ + bias)`, W given as the panels of an (n, k) weight.
pub fn gemm<E: PanelElem>(a: Lhs, panels: &[E], n: usize, k: usize, ep: Epilogue, out: Out) {
    let fits = elements(&[n.div_ceil(NR), NR, k]).is_some_and(|need| need <= panels.len());
    assert!(fits, "gemm: panels too small");
    // SAFETY: `split` checked the operands, and the panels are checked above.
    split(
        a,
        panels.as_ptr(),
        n,
        k,
        ep,
        out,
        |_| (),
        |t, _| unsafe { block(t) },
    );
}

/// Check the operands of `out (+)= act(a Wᵀ + bias)` (the panels are the
/// caller's to check), split the output into tasks, and run `run` on each
/// task, on the current rayon pool, with what `prepare` made once for all of
/// them: `prepare` is told whether tasks share rows of x (the split divides
/// the panels), so that a kernel that converts x can do it once for all.
/// Tasks write disjoint blocks of `out`.
#[allow(clippy::too_many_arguments)]
pub(super) fn split<E: Sync, S: Sync>(
    a: Lhs,
    panels: *const E,
    n: usize,
    k: usize,
    ep: Epilogue,
    out: Out,
    prepare: impl FnOnce(bool) -> S,
    run: impl Fn(&Task<E>, &S) + Sync,
) {
    let m = a.rows;
    // Checked sizes: the tiles read and write through pointers, so a product
    // that wrapped around must not pass for a small one.
    let fits = |need: Option<usize>, len: usize| need.is_some_and(|need| need <= len);
    assert!(
        fits(extent(m, a.stride, 0, k), a.data.len()),
        "gemm: lhs too small"
    );
    assert!(
        k <= a.stride && n <= out.stride,
        "gemm: strides narrower than rows"
    );
    assert!(
        fits(extent(m, out.stride, 0, n), out.data.len()),
        "gemm: output too small"
    );
    assert!(ep.bias.is_none_or(|b| b.len() >= n), "gemm: bias too short");
    if m == 0 || n == 0 {
        return;
    }
    let blocks = Blocks::new(m, n, k, rayon::current_num_threads());
    let prepared = prepare(blocks.splits_panels());
    let prepared = &prepared;
    let whole = Task {
        a: a.data.as_ptr(),
        lda: a.stride,
        rows: 0..m,
        panels,
        k,
        cols: 0..n.div_ceil(NR),
        n,
        ep,
        out: SharedMut(out.data.as_mut_ptr()),
        ldo: out.stride,
        accumulate: out.accumulate,
    };
    let whole = &whole; // the tasks share it whole (its pointer fields alone are not Sync)
    let task = |t: usize| {
        let (rows, cols) = blocks.task(t);
        run(
            &Task {
                rows,
                cols,
                ..*whole
            },
            prepared,
        )
    };
    if blocks.count() == 1 {
        task(0);
    } else {
        (0..blocks.count()).into_par_iter().for_each(task);
    }
}

/// The split of the output into tasks: `row_blocks` near-equal blocks of rows
/// (each small enough that its rows of x stay in the L2 cache while the task's
/// panels pass over them) times groups of `cols` panels, chosen so that the
/// threads finish together.
#[derive(Debug)]
struct Blocks {
    m: usize,
    panels: usize,
    row_blocks: usize,
    cols: usize,
}

impl Blocks {
    /// Bytes of x and of its output a task keeps in the L2 cache while its
    /// panels pass over it. The output counts: a stage-1 MLP's rows of 384
    /// outputs over K = 96 filled the cache with its output and pushed out its
    /// x (3136 x 96 x 384 at 0.7 of the rate of 784 x 96 x 384).
    const BLOCK_BYTES: usize = 512 << 10;

    /// Row blocks start at multiples of this: the tails of the tile kernels
    /// (12, 6 or 4 rows, then 4-row tiles) then waste no more than 3 rows.
    const ROW_STEP: usize = 4;

    /// Up to this many rows are one row block whatever K and the threads (tasks
    /// then split the panels alone). Each row block streams the whole weight:
    /// a stage-4 MLP (49 x 3072 x 768) cut into blocks of 24, 24 and 1 rows
    /// read its 9 MB three times, and ran 15-20% slower than in one block,
    /// whose x (600 KB) still fits an L2.
    const ONE_BLOCK: usize = 64;

    /// What a task's passing its panels over one more row block costs, in
    /// rows of compute per panel: the panels come again from L3 or memory.
    const RESTREAM_ROWS: usize = 16;

    /// What a task costs the thread that runs it besides its tiles (a rayon
    /// hand-off, the first panels' misses), about half a microsecond: 2^17
    /// multiply-adds.
    const TASK_MACS: usize = 1 << 17;

    /// The split with the least estimated time to the last task's end, in
    /// rows x quarter panels of compute: over the panel groups and the row
    /// blocks that keep x in cache, the largest task times the rounds of tasks
    /// each thread runs, plus what streaming the panels again for each row
    /// block and each task's hand-off cost. One thread takes the panels whole
    /// and the fewest row blocks. A 196 x 384 x 1536 stage-3 MLP on two
    /// threads is one row block in 16 groups of 6 panels (was 4 row blocks of
    /// 60, 60, 60 and 16 rows in 2 groups, which ran at 0.78 of the rate of
    /// two one-thread runs side by side, on a Zen 5).
    fn new(m: usize, n: usize, k: usize, threads: usize) -> Self {
        let panels = n.div_ceil(NR);
        let threads = threads.max(1);
        let mut best = (usize::MAX, Blocks::with(m, panels, 1, panels.max(1)));
        if m == 0 || panels == 0 {
            return best.1;
        }
        // Narrower groups would let one thread's row blocks grow, but each group
        // reads x again (3-5% slower where measured).
        let most_groups = if threads == 1 {
            1
        } else {
            panels.min(8 * threads)
        };
        let mut last_cols = 0;
        for groups in 1..=most_groups {
            let cols = panels.div_ceil(groups);
            if cols == last_cols {
                continue; // the same split as a smaller group count
            }
            last_cols = cols;
            let groups = panels.div_ceil(cols);
            let (fewest, most) = if m <= Self::ONE_BLOCK {
                (1, 1)
            } else {
                // At least 24 rows a block, whatever the cache says.
                let fit = (Self::BLOCK_BYTES / (4 * (k + cols * NR))).max(24);
                let fewest = m.div_ceil(fit);
                (fewest, (fewest + 2 * threads).min(m.div_ceil(24)))
            };
            for row_blocks in fewest..=most {
                let b = Blocks::with(m, panels, row_blocks, cols);
                // Tiles take panels in pairs: a lone one runs at about 4/5 of their rate.
                let largest = b.largest_rows().next_multiple_of(4) * (4 * cols + cols % 2);
                let rounds = (row_blocks * groups).div_ceil(threads);
                // Half a task more where threads share the work: one that starts late or is
                // slowed leaves its last task to the others, so smaller tasks finish together
                // more surely.
                let late = if threads > 1 { largest / 2 } else { 0 };
                let cost = rounds * largest
                    + late
                    + (Self::RESTREAM_ROWS * row_blocks * panels * 4).div_ceil(threads)
                    + Self::TASK_MACS / (NR / 4 * k.max(1)) * rounds;
                if cost < best.0 {
                    best = (cost, b);
                }
            }
        }
        best.1
    }

    fn with(m: usize, panels: usize, row_blocks: usize, cols: usize) -> Self {
        Blocks {
            m,
            panels,
            row_blocks,
            cols,
        }
    }

    /// The first row of row block `r` (`r = row_blocks` gives m).
    fn row_start(&self, r: usize) -> usize {
        if r >= self.row_blocks {
            return self.m;
        }
        let start = r as u128 * self.m as u128 / self.row_blocks as u128; // below m
        start as usize / Self::ROW_STEP * Self::ROW_STEP
    }

    /// Rows of the largest row block.
    fn largest_rows(&self) -> usize {
        (0..self.row_blocks)
            .map(|r| self.row_start(r + 1) - self.row_start(r))
            .max()
            .unwrap_or(0)
    }

    /// True when tasks split the panels: several tasks then read the same rows of x.
    fn splits_panels(&self) -> bool {
        self.cols < self.panels
    }

    fn count(&self) -> usize {
        self.row_blocks * self.panels.div_ceil(self.cols)
    }

    /// (rows, panels) of task `t`.
    fn task(&self, t: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let per_row = self.panels.div_ceil(self.cols);
        let (r, c) = (t / per_row, t % per_row);
        let rows = self.row_start(r)..self.row_start(r + 1);
        let cols = c * self.cols..((c + 1) * self.cols).min(self.panels);
        (rows, cols)
    }
}

/// One task's rows x panels of the output, through the best tile kernel the
/// CPU runs.
///
/// # Safety
/// The operands must hold what `gemm` checks; no other task writes these rows
/// and panels of `out`.
#[inline(never)] // the per-ISA entry: one symbol per element type (scripts/check_arm_simd.sh reads it)
unsafe fn block<E: PanelElem>(t: &Task<E>) {
    #[cfg(target_arch = "x86_64")]
    {
        use super::simd::{has_avx2, has_avx512, Separate};
        #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
        unsafe fn avx512<E: PanelElem>(t: &Task<E>) {
            t.run::<Fused, 12, 2>()
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<E: PanelElem>(t: &Task<E>) {
            t.run::<Fused, 6, 1>()
        }
        if has_avx512() {
            return avx512(t);
        }
        if has_avx2() {
            return avx2(t);
        }
        t.run::<Separate, 4, 1>()
    }
    #[cfg(not(target_arch = "x86_64"))]
    t.run::<Fused, 6, 1>()
}

/// Panels a single-row tile takes at once.
const ROW_PANELS: usize = 4;

/// Rows of the tiles that finish a block whose rows are not a multiple of the
/// tile's: a 12-row tile over the last row of 49 (stage 4) computes 11 rows
/// only to throw them away, a fifth of that GEMM's work.
pub(super) const TAIL_ROWS: usize = 4;

/// Whether the `rest` rows after a block's MR-row tiles go through TAIL_ROWS
/// tiles: only where those compute fewer rows than one more MR tile would (the
/// AVX2 tile's 6 rows over 5 left is one tile, not two of 4).
#[inline(always)]
pub(super) fn tail_in_small_tiles(rest: usize, mr: usize) -> bool {
    rest.next_multiple_of(TAIL_ROWS) < mr
}

/// The activations by the index `with_act!` gives each copy of the loops.
const EPILOGUE_ACTS: [Act; 5] = [Act::None, Act::Silu, Act::Gelu, Act::Relu, Act::Sigmoid];

/// `$body` with `$c` the const index of activation `$act` in `EPILOGUE_ACTS`,
/// so that each activation gets its own copy of the tile loops (the epilogue's
/// activation a constant, folded into vector code, not a branch per element).
macro_rules! with_act {
    ($act:expr, $c:ident => $body:expr) => {
        match $act {
            $crate::variant::Act::None => {
                const $c: usize = 0;
                $body
            }
            $crate::variant::Act::Silu => {
                const $c: usize = 1;
                $body
            }
            $crate::variant::Act::Gelu => {
                const $c: usize = 2;
                $body
            }
            $crate::variant::Act::Relu => {
                const $c: usize = 3;
                $body
            }
            $crate::variant::Act::Sigmoid => {
                const $c: usize = 4;
                $body
            }
        }
    };
}
pub(super) use with_act;

/// Rows `rows` x panels `cols` of `out (+)= act(a Wᵀ + bias)` (what `gemm` checked).
pub(super) struct Task<'a, E> {
    pub(super) a: *const f32,
    pub(super) lda: usize,
    pub(super) rows: std::ops::Range<usize>,
    pub(super) panels: *const E,
    pub(super) k: usize,
    pub(super) cols: std::ops::Range<usize>,
    n: usize,
    pub(super) ep: Epilogue<'a>,
    out: SharedMut,
    ldo: usize,
    accumulate: bool,
}

// SAFETY: a task only reads through `a` and `panels` (operands `gemm` borrows for
// the whole call), and tasks made from one `Task` write disjoint blocks of `out`.
unsafe impl<E: Sync> Sync for Task<'_, E> {}

impl<E: PanelElem> Task<'_, E> {
    /// One copy of the loops per activation (`with_act!`).
    #[inline(always)]
    unsafe fn run<F: Fma, const MR: usize, const NP: usize>(&self) {
        with_act!(self.ep.act, ACT => self.run_with::<F, MR, NP, ACT>())
    }

    /// Panels in steps of NP (then one at a time), rows in tiles of MR: the
    /// panels of a step stay in L1 while the task's rows pass under them.
    #[inline(always)]
    unsafe fn run_with<F: Fma, const MR: usize, const NP: usize, const ACT: usize>(&self) {
        if self.rows.len() < MR {
            return self.rows_alone::<F, ACT>();
        }
        let mut p = self.cols.start;
        while p + NP <= self.cols.end {
            self.column::<F, MR, NP, ACT>(p);
            p += NP;
        }
        while p < self.cols.end {
            self.column::<F, MR, 1, ACT>(p);
            p += 1;
        }
    }

    #[inline(always)]
    unsafe fn column<F: Fma, const MR: usize, const NP: usize, const ACT: usize>(&self, p: usize) {
        let panel_bytes = NR * self.k * std::mem::size_of::<E>();
        let ahead = |r: usize| self.ahead(r, MR, p, NP, panel_bytes, self.k);
        let mut r = self.rows.start;
        while r + MR <= self.rows.end {
            self.tile_at::<F, MR, NP, ACT>(r, MR, p, ahead(r));
            r += MR;
        }
        let rest = self.rows.end - r;
        if rest > 0 && !tail_in_small_tiles(rest, MR) {
            return self.tile_at::<F, MR, NP, ACT>(r, rest, p, ahead(r));
        }
        while r < self.rows.end {
            let live = TAIL_ROWS.min(self.rows.end - r);
            self.tile_at::<F, TAIL_ROWS, NP, ACT>(r, live, p, ahead(r));
            r += TAIL_ROWS;
        }
    }

    /// What the tile at row `r` of the column at panel `p` (`np` panels of
    /// `panel_bytes`, `steps` steps of K) asks for ahead of need: its share of
    /// the panels of the column's next step, and, for the task's first tile,
    /// its own panels.
    #[inline(always)]
    pub(super) fn ahead(
        &self,
        r: usize,
        mr: usize,
        p: usize,
        np: usize,
        panel_bytes: usize,
        steps: usize,
    ) -> Ahead {
        let next = p + np;
        let bytes = (self.cols.end.min(next + np).saturating_sub(next)) * panel_bytes;
        let tiles = self.rows.len().div_ceil(mr);
        let lines = share(
            bytes.div_ceil(LINE),
            tiles,
            (r - self.rows.start) / mr,
            steps,
        );
        let panels = self.panels.cast::<u8>();
        Ahead {
            at: panels.wrapping_add(next * panel_bytes + lines.start * LINE),
            lines: lines.len(),
            own: panels.wrapping_add(p * panel_bytes),
            own_stride: panel_bytes,
            lead: r == self.rows.start && p == self.cols.start,
        }
    }

    /// Fewer rows than a tile (the classifier's single row): a row at a time
    /// under `ROW_PANELS` panels at once (that many independent sums), instead
    /// of MR-row tiles that compute rows only to throw them away.
    #[inline(always)]
    unsafe fn rows_alone<F: Fma, const ACT: usize>(&self) {
        for r in self.rows.clone() {
            let mut p = self.cols.start;
            while p + ROW_PANELS <= self.cols.end {
                self.tile_at::<F, 1, ROW_PANELS, ACT>(r, 1, p, Ahead::NONE);
                p += ROW_PANELS;
            }
            while p < self.cols.end {
                self.tile_at::<F, 1, 1, ACT>(r, 1, p, Ahead::NONE);
                p += 1;
            }
        }
    }

    /// The tile at row `r` (`live` rows of it real), panel `p`: computed and stored.
    #[inline(always)]
    unsafe fn tile_at<F: Fma, const MR: usize, const NP: usize, const ACT: usize>(
        &self,
        r: usize,
        live: usize,
        p: usize,
        ahead: Ahead,
    ) {
        self.prefetch_out::<NP>(r, live, p);
        let acc = tile::<E, F, MR, NP>(
            self.a.add(r * self.lda),
            self.lda,
            live,
            self.panels.add(p * NR * self.k),
            self.k,
            ahead,
        );
        self.store::<F, MR, NP, ACT>(&acc, r, live, p);
    }

    /// Ask for the cache lines a tile at row `r`, panel `p` will write, before
    /// its products are computed, so that the stores do not wait on reads from
    /// memory where the output is larger than the L2 cache (a stage-1 MLP's
    /// 3136 x 384).
    #[inline(always)]
    pub(super) unsafe fn prefetch_out<const NP: usize>(&self, r: usize, live: usize, p: usize) {
        for i in 0..live {
            for q in 0..NP {
                let col = (p + q) * NR;
                if col < self.n {
                    let at = self.out.0.add((r + i) * self.ldo + col) as *const u8;
                    prefetch(at);
                    prefetch(at.add(4 * (NR.min(self.n - col) - 1)));
                }
            }
        }
    }

    /// Write `live` rows of a tile at row `r`, panel `p`: only columns below N,
    /// through the epilogue, added to `out` when accumulating.
    #[inline(always)]
    pub(super) unsafe fn store<F: Fma, const MR: usize, const NP: usize, const ACT: usize>(
        &self,
        acc: &[[[f32; NR]; NP]; MR],
        r: usize,
        live: usize,
        p: usize,
    ) {
        let act = EPILOGUE_ACTS[ACT];
        for q in 0..NP {
            let col = (p + q) * NR;
            let width = NR.min(self.n - col);
            let mut bias = [0.0f32; NR];
            if let Some(b) = self.ep.bias {
                match <&[f32; NR]>::try_from(&b[col..col + width]) {
                    Ok(whole) => bias = *whole,
                    Err(_) => bias[..width].copy_from_slice(&b[col..col + width]),
                }
            }
            for (i, row) in acc.iter().enumerate().take(live) {
                // All 16 lanes through the epilogue (fixed width: vector code), then the live ones stored.
                let mut v = [0.0f32; NR];
                for j in 0..NR {
                    v[j] = act::apply_with::<F>(act, row[q][j] + bias[j]);
                }
                let dst =
                    std::slice::from_raw_parts_mut(self.out.0.add((r + i) * self.ldo + col), width);
                // A whole panel (all but a last narrow one) as fixed-width vector code: a
                // copy of `width` values is a call to memcpy, for each row of every tile.
                if let Ok(dst) = <&mut [f32; NR]>::try_from(&mut *dst) {
                    if self.accumulate {
                        (0..NR).for_each(|j| dst[j] += v[j]);
                    } else {
                        *dst = v;
                    }
                } else if self.accumulate {
                    dst.iter_mut().zip(&v).for_each(|(d, v)| *d += v);
                } else {
                    dst.copy_from_slice(&v[..width]);
                }
            }
        }
    }
}

/// Bytes in a cache line.
const LINE: usize = 64;
/// How far ahead of its K loop a task's first tile asks for its own panels, in
/// lines (steps of K).
const LEAD: usize = 12;

/// Ask for the cache line at `at` (`prefetcht0`) on x86-64; elsewhere nothing,
/// the hardware's prefetcher alone. A prefetch reads nothing the program sees
/// and never faults, so any address will do.
#[inline(always)]
fn prefetch(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: see above; SSE is baseline on x86-64.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// Cache lines of weight panels a tile asks for while it runs, one a step of
/// its K loop: its share of the panels the column's next step reads (each of
/// the column's tiles an equal part), and, for the first tile of a task, its
/// own panels `LEAD` lines ahead of their use. A model's weights are not in
/// cache from one pass to the next (a bf16 VMamba-T's 60 MB against a 32 MB
/// L3), and a step's first tile would read them from memory as it goes,
/// through a hardware prefetcher that starts over at each 4 KB page: a
/// stage-4 MLP (49 x 768 x 3072) whose weight was not in cache ran at 0.73 of
/// its rate with it in cache, on a Zen 5.
#[derive(Clone, Copy)]
pub(super) struct Ahead {
    /// The first line of the share of the next step's panels, and how many.
    at: *const u8,
    lines: usize,
    /// The tile's own panels, `own_stride` bytes apart, asked for when `lead`.
    own: *const u8,
    own_stride: usize,
    lead: bool,
}

/// The lines of `all` that tile `tile` of `tiles` asks for, one at each of
/// its `steps` steps: consecutive equal parts, in order.
fn share(all: usize, tiles: usize, tile: usize, steps: usize) -> std::ops::Range<usize> {
    let part = all.div_ceil(tiles.max(1));
    let first = (tile * part).min(all);
    first..first + part.min(all - first).min(steps)
}

impl Ahead {
    /// Nothing asked for.
    pub(super) const NONE: Ahead = Ahead {
        at: std::ptr::null(),
        lines: 0,
        own: std::ptr::null(),
        own_stride: 0,
        lead: false,
    };

    /// Ask for what step `s` of K asks for; `np` panels are the tile's own (an
    /// address past the panels, the last steps' lead, is harmless).
    #[inline(always)]
    pub(super) fn step(&self, s: usize, np: usize) {
        if s < self.lines {
            prefetch(self.at.wrapping_add(s * LINE));
        }
        if self.lead {
            for q in 0..np {
                prefetch(
                    self.own
                        .wrapping_add(q * self.own_stride + (s + LEAD) * LINE),
                );
            }
        }
    }
}

/// The MR x (NP*16) tile at `a` (rows `lda` apart, `live` of them real: the
/// others repeat the last and are not stored) times NP panels from `b`.
#[inline(always)]
unsafe fn tile<E: PanelElem, F: Fma, const MR: usize, const NP: usize>(
    a: *const f32,
    lda: usize,
    live: usize,
    b: *const E,
    k: usize,
    ahead: Ahead,
) -> [[[f32; NR]; NP]; MR] {
    let mut acc = [[[0.0f32; NR]; NP]; MR];
    let mut rows = [a; MR];
    for (i, r) in rows.iter_mut().enumerate() {
        *r = a.add(i.min(live - 1) * lda);
    }
    for kk in 0..k {
        ahead.step(kk, NP);
        let mut w = [[0.0f32; NR]; NP];
        for (q, wq) in w.iter_mut().enumerate() {
            *wq = E::load(b.add((q * k + kk) * NR));
        }
        for i in 0..MR {
            let x = *rows[i].add(kk);
            for q in 0..NP {
                for j in 0..NR {
                    acc[i][q][j] = F::fma(x, w[q][j], acc[i][q][j]);
                }
            }
        }
    }
    acc
}

/// Plain loops, the reference for `gemm`: `out (+)= act(a Wᵀ + bias)` with W
/// (n, k) row-major, summed in f64.
pub fn gemm_ref(a: Lhs, w: &[f32], n: usize, k: usize, ep: Epilogue, out: Out) {
    for i in 0..a.rows {
        for j in 0..n {
            let mut s = ep.bias.map_or(0.0, |b| b[j] as f64);
            for kk in 0..k {
                s += a.data[i * a.stride + kk] as f64 * w[j * k + kk] as f64;
            }
            let v = act::act_ref(ep.act, s as f32);
            let o = &mut out.data[i * out.stride + j];
            *o = if out.accumulate { *o + v } else { v };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::simd::Separate;
    use crate::testutil::{max_abs_diff, randn};

    /// The tiles of a column ask for each line of the next step's panels once,
    /// in order, and for nothing past them; all of them where each tile has a
    /// step of K for each of its lines.
    #[test]
    fn tiles_share_the_next_panels() {
        for (all, tiles, steps) in [
            (768, 17, 384),
            (1536, 5, 384),
            (64, 3, 96),
            (0, 4, 8),
            (7, 9, 1),
            (2, 1, 1),
            (100, 1, 60),
        ] {
            let mut next = 0;
            for tile in 0..tiles + 2 {
                // Tail tiles may count past `tiles` (they share the last index in `ahead`).
                let lines = share(all, tiles, tile.min(tiles - 1), steps);
                assert!(
                    lines.end <= all && lines.len() <= steps,
                    "{all} {tiles} {steps}: {lines:?}"
                );
                if tile < tiles {
                    assert!(
                        lines.start == next || lines.is_empty(),
                        "{all} {tiles} {steps}: {lines:?}"
                    );
                    next = next.max(lines.end);
                }
            }
            if all.div_ceil(tiles) <= steps {
                assert_eq!(next, all, "{all} {tiles} {steps}");
            }
        }
    }

    /// The packed GEMM against the reference on shapes that cover every edge of
    /// the tiling (rows and columns short of a tile or panel, K of 1), strided
    /// operands, bias and accumulation, on one and on several threads.
    #[test]
    fn gemm_matches_reference() {
        // 130 x 600 x 100 on 3 threads: row blocks of 64 and 66 rows (tail tiles)
        // and groups of 2 panels.
        let b = Blocks::new(130, 100, 600, 3);
        assert!(b.row_blocks > 1 && b.splits_panels(), "{b:?}");
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for (m, k, n) in [
            (1, 1, 1),
            (5, 3, 17),
            (37, 19, 23),
            (13, 96, 48),
            (200, 40, 33),
            (7, 300, 64),
            (19, 33, 40),
            (23, 17, 20),
            (130, 600, 100),
        ] {
            let (lda, ldo) = (k + 3, n + 5);
            let x = randn(m * lda, 1);
            let w = randn(n * k, 2);
            let bias = randn(n, 3);
            let init = randn(m * ldo, 4);
            let packed = PackedWeight::new(&w, n, k, WeightType::F32);
            let with_bias = |act| Epilogue {
                bias: Some(&bias[..]),
                act,
            };
            for (acc, ep) in [
                (false, Epilogue::NONE),
                (true, with_bias(Act::None)),
                (false, with_bias(Act::Gelu)),
            ] {
                let a = Lhs {
                    data: &x,
                    rows: m,
                    stride: lda,
                };
                let mut want = init.clone();
                gemm_ref(
                    a,
                    &w,
                    n,
                    k,
                    ep,
                    Out {
                        data: &mut want,
                        stride: ldo,
                        accumulate: acc,
                    },
                );
                for threads in [1, 3] {
                    let mut got = init.clone();
                    let Panels::F32(panels) = &packed.panels else {
                        unreachable!()
                    };
                    let out = Out {
                        data: &mut got,
                        stride: ldo,
                        accumulate: acc,
                    };
                    if threads == 1 {
                        gemm(a, panels, n, k, ep, out);
                    } else {
                        pool.install(|| gemm(a, panels, n, k, ep, out));
                    }
                    let tol = 1e-5 * (k as f32).sqrt();
                    assert!(
                        max_abs_diff(&got, &want) < tol,
                        "{m}x{k}x{n} acc={acc} {ep:?} threads={threads}"
                    );
                }
            }
        }
    }

    /// Every tile shape the dispatch can pick (12x2 panels on AVX-512, 6x1 on
    /// AVX2 and aarch64, 4x1 without FMA), run here whatever this CPU is, so
    /// that the code the AVX-512 copy compiles from is tested on any machine;
    /// with a last tile part empty (29 rows), full tiles only (24), and fewer
    /// rows than a tile (1, 3: single-row tiles).
    #[test]
    fn every_tile_shape_matches_reference() {
        let (k, n) = (21, 80); // 5 panels: a group of ROW_PANELS and one more
        let w = randn(n * k, 6);
        let bias = randn(n, 7);
        let Panels::F32(panels) = PackedWeight::new(&w, n, k, WeightType::F32).panels else {
            unreachable!()
        };
        let ep = Epilogue {
            bias: Some(&bias),
            act: Act::Silu,
        };
        for m in [29, 24, 1, 3] {
            let x = randn(m * k, 5);
            let mut want = vec![0.0; m * n];
            let a = Lhs {
                data: &x,
                rows: m,
                stride: k,
            };
            let out = Out {
                data: &mut want,
                stride: n,
                accumulate: false,
            };
            gemm_ref(a, &w, n, k, ep, out);
            // SAFETY (each): the operands are as `gemm` checks, and one task writes all of `got`.
            let runs: [fn(&Task<f32>); 4] = [
                |t| unsafe { t.run::<Fused, 12, 2>() },
                |t| unsafe { t.run::<Fused, 6, 1>() },
                |t| unsafe { t.run::<Separate, 4, 1>() },
                |t| unsafe { t.run::<Fused, 1, 3>() },
            ];
            for run in runs {
                let mut got = vec![f32::NAN; m * n];
                let t = Task {
                    a: x.as_ptr(),
                    lda: k,
                    rows: 0..m,
                    panels: panels.as_ptr(),
                    k,
                    cols: 0..n.div_ceil(NR),
                    n,
                    ep,
                    out: SharedMut(got.as_mut_ptr()),
                    ldo: n,
                    accumulate: false,
                };
                run(&t);
                assert!(max_abs_diff(&got, &want) < 1e-4, "m = {m}");
            }
        }
    }

    /// Sizes whose products wrap around are refused, not taken for small ones
    /// (the tiles read through pointers).
    #[test]
    #[should_panic(expected = "gemm: lhs too small")]
    fn wrapping_sizes_are_refused() {
        let (x, w, mut out) = (vec![1.0; 4], vec![1.0; packed_len(2, 2)], vec![0.0; 4]);
        let a = Lhs {
            data: &x,
            rows: (1 << 63) + 1, // (rows - 1) * 2 wraps to 0
            stride: 2,
        };
        let o = Out {
            data: &mut out,
            stride: 2,
            accumulate: false,
        };
        gemm(a, &w, 2, 2, Epilogue::NONE, o);
    }

    /// Widened bf16 panels compute exactly what f32 panels of the rounded
    /// weight do, and every layout gives those rounded values back.
    #[test]
    fn bf16_weights_are_the_rounded_f32_weights() {
        let (m, k, n) = (23, 70, 45);
        let x = randn(m * k, 8);
        let w = randn(n * k, 9);
        let rounded: Vec<f32> = w.iter().map(|&v| Bf16::from_f32(v).to_f32()).collect();
        let f32w = || PackedWeight::from_vec(w.clone(), n, k);
        let bf16 = f32w().to_layout(WeightType::Bf16, false);
        assert!(!bf16.bf16_arithmetic());
        assert_eq!(bf16.unpack(), rounded);
        assert_eq!(f32w().unpack(), w);
        let pairs = f32w().to_layout(WeightType::Bf16, true);
        assert!(pairs.bf16_arithmetic() && pairs.dtype() == WeightType::Bf16);
        assert_eq!(pairs.unpack(), rounded);
        // From one layout to the other and back.
        assert_eq!(
            pairs.clone().to_layout(WeightType::Bf16, false).unpack(),
            rounded
        );
        assert_eq!(
            bf16.clone().to_layout(WeightType::Bf16, true).unpack(),
            rounded
        );
        assert_eq!(pairs.to_layout(WeightType::F32, false).unpack(), rounded);
        assert_eq!(
            f32w().to_type(WeightType::Bf16).bf16_arithmetic(),
            bf16dot::available()
        );
        let (mut got, mut want) = (vec![0.0; m * n], vec![0.0; m * n]);
        bf16.apply(&x, m, Epilogue::NONE, &mut got, false);
        PackedWeight::new(&rounded, n, k, WeightType::F32).apply(
            &x,
            m,
            Epilogue::NONE,
            &mut want,
            false,
        );
        assert!(max_abs_diff(&got, &want) < 1e-5);
        assert!(max_abs_diff(&rounded, &w) > 0.0);
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        let cases = [
            (1.0f32, 0x3f80u16),
            (f32::from_bits(0x3f80_8000), 0x3f80), // a tie: to even (down)
            (f32::from_bits(0x3f81_8000), 0x3f82), // a tie: to even (up)
            (f32::from_bits(0x3f80_8001), 0x3f81),
            (f32::INFINITY, 0x7f80),
            (f32::MAX, 0x7f80), // rounds up to infinity
            (-0.0, 0x8000),
        ];
        for (x, bits) in cases {
            assert_eq!(Bf16::from_f32(x).0, bits, "{x:e}");
        }
        assert!(Bf16::from_f32(f32::NAN).to_f32().is_nan());
        assert!(Bf16::from_f32(f32::from_bits(0x7f80_0001))
            .to_f32()
            .is_nan()); // a NaN that would round to inf
    }

    #[test]
    fn task_split_covers_the_output_once() {
        for (m, n, k, threads) in [
            (1, 1, 1, 1),
            (196, 1536, 384, 2),
            (196, 104, 384, 2),
            (49, 768, 3072, 2),
            (3136, 96, 96, 16),
            (3136, 384, 96, 2),
            (7, 1000, 768, 8),
            (65, 17, 5, 3),
        ] {
            let blocks = Blocks::new(m, n, k, threads);
            let mut seen = vec![0u8; m * n.div_ceil(NR)];
            for t in 0..blocks.count() {
                let (rows, cols) = blocks.task(t);
                assert!(
                    !rows.is_empty() && !cols.is_empty(),
                    "{m}x{n}: task {t} empty"
                );
                assert_eq!(rows.start % Blocks::ROW_STEP, 0);
                for r in rows {
                    for c in cols.clone() {
                        seen[r * n.div_ceil(NR) + c] += 1;
                    }
                }
            }
            assert!(seen.iter().all(|&s| s == 1), "{m}x{n} on {threads}");
        }
    }

    /// The stage-3 MLP on two threads: its 196 rows in one block (x fits the
    /// cache, so the weight is read once), the panels in equal groups, at least
    /// two tasks a thread (one late thread leaves work to the other).
    #[test]
    fn two_threads_split_the_panels_evenly() {
        for (n, k) in [(1536, 384), (384, 384)] {
            let blocks = Blocks::new(196, n, k, 2);
            let tasks: Vec<_> = (0..blocks.count()).map(|t| blocks.task(t)).collect();
            assert!(tasks.len() >= 4, "{blocks:?}");
            assert!(
                tasks
                    .iter()
                    .all(|(rows, cols)| *rows == (0..196) && cols.len() == tasks[0].1.len()),
                "{blocks:?}"
            );
        }
    }

    #[test]
    fn few_rows_stream_the_weight_once() {
        // 49 rows of K = 3072: one row block (all tasks split the panels), not 24 + 24 + 1.
        for threads in [1, 2, 16] {
            let blocks = Blocks::new(49, 768, 3072, threads);
            assert!(
                (0..blocks.count()).all(|t| blocks.task(t).0 == (0..49)),
                "on {threads}"
            );
        }
        // Past ONE_BLOCK rows, x's cache budget splits them again.
        assert!(Blocks::new(196, 384, 1536, 1).count() > 1);
    }
}
