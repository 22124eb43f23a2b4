//! The selective scan (docs/model.md §5, step 3).
//!
//! `selective_scan_ref` is the plain recurrence in the official layout.
//! `cross_selective_scan` is the hot kernel of the model: it runs all four
//! directions on channel-last activations, walking each direction's order
//! through the pixel grid (so cross-scan and cross-merge cost nothing), with
//! vector lanes across channels (d_state is 1 in the v2 models, so vectorising
//! over the state would leave the lanes empty).

use rayon::prelude::*;

use super::math::{exp_core_with, softplus_with};
use super::simd::{dispatch_fma, Fma};
use super::SharedMut;
use crate::memory::elements;
use crate::variant::ScanPath;

/// Reference selective scan, one batch element, in the official layout:
/// u, delta (K*Di, L); a (K*Di, N) (already -exp(A_logs)); b, c (K, N, L);
/// d, bias (K*Di). Returns y (K*Di, L). Channel `i` uses group `i / (KDi / K)`.
#[allow(clippy::too_many_arguments)]
pub fn selective_scan_ref(
    u: &[f32],
    delta: &[f32],
    a: &[f32],
    b: &[f32],
    c: &[f32],
    d: &[f32],
    bias: &[f32],
    k: usize,
    n: usize,
    l: usize,
) -> Vec<f32> {
    let kd = d.len();
    let per_group = kd / k;
    let mut y = vec![0.0f32; kd * l];
    for ch in 0..kd {
        let g = ch / per_group;
        let mut h = vec![0.0f64; n];
        for t in 0..l {
            let x = delta[ch * l + t] as f64 + bias[ch] as f64;
            let dt = if x > 20.0 { x } else { x.exp().ln_1p() };
            let uu = u[ch * l + t] as f64;
            let mut acc = d[ch] as f64 * uu;
            for s in 0..n {
                let bb = b[(g * n + s) * l + t] as f64;
                let cc = c[(g * n + s) * l + t] as f64;
                h[s] = (dt * a[ch * n + s] as f64).exp() * h[s] + dt * bb * uu;
                acc += h[s] * cc;
            }
            y[ch * l + t] = acc as f32;
        }
    }
    y
}

/// Channels per vector block (one 64-byte cache line of f32).
const LANES: usize = 16;

/// Inputs of the fused multi-direction scan for a batch, all channel-last. K is
/// the number of directions (`paths.len()`, 4 in the released models).
#[derive(Debug)]
pub struct CrossScan<'a> {
    /// The order each direction walks through the map.
    pub paths: &'a [ScanPath],
    /// Images in the batch.
    pub batch: usize,
    /// Height of each map.
    pub h: usize,
    /// Width of each map.
    pub w: usize,
    /// Inner width Di.
    pub di: usize,
    /// d_state N.
    pub n: usize,
    /// dt rank R.
    pub r: usize,
    /// u: (B*L, Di), the conv output, pixel order.
    pub u: &'a [f32],
    /// Projections: (B*L, K, R+2N) holding dt, B, C for each direction.
    pub xdbl: &'a [f32],
    /// The delta projection (dt_projs_weight): (K, Di, R). The scan computes
    /// delta = dt W_k^T itself, at each step, instead of reading it from a
    /// (K, B*L, Di) buffer that a GEMM of inner size R would have written.
    pub dt_weight: &'a [f32],
    /// A = -exp(A_logs): (K*Di, N).
    pub a: &'a [f32],
    /// Skip weights D: (K*Di).
    pub d: &'a [f32],
    /// dt bias: (K*Di).
    pub bias: &'a [f32],
}

impl CrossScan<'_> {
    /// Every operand's length against the sizes, in checked arithmetic: the
    /// output is written through a pointer, so a product that wrapped around
    /// must not pass for a small one.
    fn check(&self) {
        let prod = |dims: &[usize]| elements(dims).expect("scan: sizes overflow");
        let (rows, k) = (prod(&[self.batch, self.h, self.w]), self.paths.len());
        let per_pixel = self.n.checked_mul(2).and_then(|v| v.checked_add(self.r));
        assert_eq!(self.u.len(), prod(&[rows, self.di]), "u");
        assert_eq!(
            self.xdbl.len(),
            prod(&[rows, k, per_pixel.expect("scan: sizes overflow")]),
            "xdbl"
        );
        assert_eq!(
            self.dt_weight.len(),
            prod(&[k, self.di, self.r]),
            "dt_weight"
        );
        assert_eq!(self.a.len(), prod(&[k, self.di, self.n]), "A");
        assert_eq!(self.d.len(), prod(&[k, self.di]), "D");
        assert_eq!(self.bias.len(), prod(&[k, self.di]), "bias");
    }
}

/// A path's walk through the pixel grid as runs of `len` steps (H*W in all):
/// run `i` starts at pixel `start + i * line_step` and moves by `step`. With
/// `mirror`, the output of the step at pixel p lands on pixel H*W-1-p.
struct Walk {
    len: usize,
    start: isize,
    line_step: isize,
    step: isize,
    mirror: bool,
}

impl Walk {
    fn new(path: ScanPath, h: usize, w: usize) -> Self {
        let (hw, hi, wi) = ((h * w) as isize, h as isize, w as isize);
        let (len, start, line_step, step) = match path {
            ScanPath::Raster => (h * w, 0, 0, 1),
            ScanPath::Transposed => (h, 0, 1, wi),
            ScanPath::RasterRev | ScanPath::RasterRevUnflipped => (h * w, hw - 1, 0, -1),
            ScanPath::TransposedRev => (h, hw - 1, -1, -wi),
            ScanPath::Rot90 => (h, wi - 1, -1, wi),
            ScanPath::Rot270 => (h, (hi - 1) * wi, 1, -wi),
        };
        Walk {
            len,
            start,
            line_step,
            step,
            mirror: path == ScanPath::RasterRevUnflipped,
        }
    }

    /// The pixel (of `hw`) where the output of the step at `pixel` lands.
    #[inline(always)]
    fn lands(&self, pixel: usize, hw: usize) -> usize {
        if self.mirror {
            hw - 1 - pixel
        } else {
            pixel
        }
    }
}

#[inline(always)]
fn load<const FULL: bool>(src: &[f32], nc: usize) -> [f32; LANES] {
    let mut v = [0.0f32; LANES];
    if FULL {
        v.copy_from_slice(&src[..LANES]);
    } else {
        v[..nc].copy_from_slice(&src[..nc]);
    }
    v
}

/// Per-block constants of one direction: the delta projection (R x lanes),
/// A (N x lanes), D, dt bias.
struct BlockConsts {
    wdt: Vec<[f32; LANES]>,
    a: Vec<[f32; LANES]>,
    dskip: [f32; LANES],
    bias: [f32; LANES],
}

/// One step of the recurrence at one pixel for a block of channels; returns y.
/// `h` is the state (N x lanes), `proj` the pixel's dt (R), B (N) then C (N).
#[inline(always)]
fn step<F: Fma>(
    u: &[f32; LANES],
    proj: &[f32],
    c: &BlockConsts,
    h: &mut [[f32; LANES]],
) -> [f32; LANES] {
    let (n, r) = (h.len(), c.wdt.len());
    let (dtr, bc) = proj.split_at(r);
    // Even and odd terms in two sums: half the chain of dependent multiply-adds (see `scan_pair`).
    let mut dr = [[0.0f32; LANES]; 2];
    for (x, w) in dtr.chunks(2).zip(c.wdt.chunks(2)) {
        for (q, (&x, w)) in x.iter().zip(w).enumerate() {
            for i in 0..LANES {
                dr[q][i] = F::fma(x, w[i], dr[q][i]);
            }
        }
    }
    let dr: [f32; LANES] = std::array::from_fn(|i| dr[0][i] + dr[1][i]);
    let mut dt = [0.0f32; LANES];
    let mut du = [0.0f32; LANES];
    let mut acc = [0.0f32; LANES];
    for i in 0..LANES {
        dt[i] = softplus_with::<F>(dr[i] + c.bias[i]);
        du[i] = dt[i] * u[i];
        acc[i] = c.dskip[i] * u[i];
    }
    for st in 0..n {
        let (bv, cv) = (bc[st], bc[n + st]);
        let (hs, a) = (&mut h[st], &c.a[st]);
        for i in 0..LANES {
            // dt >= 0 and A < 0: the argument is never positive.
            hs[i] = F::fma(exp_core_with::<F>(dt[i] * a[i]), hs[i], du[i] * bv);
            acc[i] = F::fma(hs[i], cv, acc[i]);
        }
    }
    acc
}

/// One image, one block of channels `d0..d0+nc`, one direction. The hot loop.
#[inline(always)]
fn scan_block<F: Fma, const FULL: bool>(
    s: &CrossScan,
    img: usize,
    d0: usize,
    nc: usize,
    k: usize,
    y: SharedMut,
) {
    let (di, n, hw) = (s.di, s.n, s.h * s.w);
    let xs = s.paths.len() * (s.r + 2 * s.n);
    let ch0 = k * di + d0;
    let mut consts = BlockConsts {
        wdt: vec![[0.0f32; LANES]; s.r],
        a: vec![[0.0f32; LANES]; n],
        dskip: load::<FULL>(&s.d[ch0..], nc),
        bias: load::<FULL>(&s.bias[ch0..], nc),
    };
    for i in 0..nc {
        for st in 0..n {
            consts.a[st][i] = s.a[(ch0 + i) * n + st];
        }
        for j in 0..s.r {
            consts.wdt[j][i] = s.dt_weight[(ch0 + i) * s.r + j];
        }
    }
    let mut h = vec![[0.0f32; LANES]; n];
    let u_img = &s.u[img * hw * di + d0..];
    let proj_img = &s.xdbl[img * hw * xs + k * (s.r + 2 * n)..];
    let walk = Walk::new(s.paths[k], s.h, s.w);
    let mut cursor = Cursor::new(&walk);
    for _ in 0..hw {
        let pu = cursor.advance();
        let u = load::<FULL>(&u_img[pu * di..], nc);
        let acc = step::<F>(&u, &proj_img[pu * xs..][..s.r + 2 * n], &consts, &mut h);
        // SAFETY: this task alone writes channels d0..d0+nc of image `img` (see
        // the caller), and `lands` gives a pixel below H*W.
        unsafe { add_to::<FULL>(y, (img * hw + walk.lands(pu, hw)) * di + d0, nc, acc) }
    }
}

/// Add the `nc` live lanes of `v` into y at `at`.
///
/// # Safety
/// `y` must be valid for writing `at..at + nc` and no other thread may touch them.
#[inline(always)]
unsafe fn add_to<const FULL: bool>(y: SharedMut, at: usize, nc: usize, v: [f32; LANES]) {
    let out = y.0.add(at);
    for (i, v) in v.iter().enumerate().take(if FULL { LANES } else { nc }) {
        *out.add(i) += v;
    }
}

/// Where a walk is: the pixel it is at, its step along the line, its line.
struct Cursor<'w> {
    walk: &'w Walk,
    pixel: isize,
    step: usize,
    line: usize,
}

impl<'w> Cursor<'w> {
    fn new(walk: &'w Walk) -> Self {
        Cursor {
            walk,
            pixel: walk.start,
            step: 0,
            line: 0,
        }
    }

    /// The pixel the walk is at, moving it on to the next.
    #[inline(always)]
    fn advance(&mut self) -> usize {
        let here = self.pixel as usize;
        self.step += 1;
        if self.step == self.walk.len {
            (self.step, self.line) = (0, self.line + 1);
            self.pixel = self.walk.start + self.line as isize * self.walk.line_step;
        } else {
            self.pixel += self.walk.step;
        }
        here
    }
}

/// Directions `scan_pair` walks side by side.
const PAIR: usize = 2;

/// `scan_block` for d_state 1 (the v2 models), two directions `k0` and `k0 + 1`
/// side by side. A step is one long chain of dependent operations (projection,
/// softplus, exp, the state's update) that the CPU cannot start the next step
/// early enough to overlap, so the chain sets the speed; two directions in one
/// loop give it two independent chains to interleave, and the projection's even
/// and odd terms go in two sums (R is 48 in the last stage). Everything is
/// computed before anything is stored, in local arrays, so that the compiler
/// keeps it in registers.
#[inline(always)]
fn scan_pair<F: Fma, const FULL: bool>(
    s: &CrossScan,
    img: usize,
    d0: usize,
    nc: usize,
    k0: usize,
    y: SharedMut,
) {
    let (di, r, hw) = (s.di, s.r, s.h * s.w);
    let xs = s.paths.len() * (r + 2);
    let mut wdt = vec![[[0.0f32; LANES]; PAIR]; r]; // (R, direction, lanes)
    let mut a = [[0.0f32; LANES]; PAIR];
    let mut dskip = [[0.0f32; LANES]; PAIR];
    let mut bias = [[0.0f32; LANES]; PAIR];
    for q in 0..PAIR {
        let ch0 = (k0 + q) * di + d0;
        dskip[q] = load::<FULL>(&s.d[ch0..], nc);
        bias[q] = load::<FULL>(&s.bias[ch0..], nc);
        for i in 0..nc {
            a[q][i] = s.a[ch0 + i];
            for (j, w) in wdt.iter_mut().enumerate() {
                w[q][i] = s.dt_weight[(ch0 + i) * r + j];
            }
        }
    }
    let walks: [Walk; PAIR] = std::array::from_fn(|q| Walk::new(s.paths[k0 + q], s.h, s.w));
    let mut cursors = walks.each_ref().map(Cursor::new);
    let mut h = [[0.0f32; LANES]; PAIR];
    let u_img = &s.u[img * hw * di + d0..];
    let proj_img = &s.xdbl[img * hw * xs..];
    for _ in 0..hw {
        let pixels = cursors.each_mut().map(Cursor::advance);
        let u: [[f32; LANES]; PAIR] =
            std::array::from_fn(|q| load::<FULL>(&u_img[pixels[q] * di..], nc));
        // Each direction's dt (R), B and C at its pixel.
        let proj: [&[f32]; PAIR] =
            std::array::from_fn(|q| &proj_img[pixels[q] * xs + (k0 + q) * (r + 2)..][..r + 2]);
        let mut even = [[0.0f32; LANES]; PAIR];
        let mut odd = [[0.0f32; LANES]; PAIR];
        for (j, w) in wdt.chunks_exact(2).enumerate() {
            for q in 0..PAIR {
                let (x0, x1) = (proj[q][2 * j], proj[q][2 * j + 1]);
                for i in 0..LANES {
                    even[q][i] = F::fma(x0, w[0][q][i], even[q][i]);
                    odd[q][i] = F::fma(x1, w[1][q][i], odd[q][i]);
                }
            }
        }
        if r % 2 == 1 {
            for q in 0..PAIR {
                let x = proj[q][r - 1];
                for i in 0..LANES {
                    even[q][i] = F::fma(x, wdt[r - 1][q][i], even[q][i]);
                }
            }
        }
        let mut acc = [[0.0f32; LANES]; PAIR];
        for q in 0..PAIR {
            let (bv, cv) = (proj[q][r], proj[q][r + 1]);
            for i in 0..LANES {
                let dt = softplus_with::<F>(even[q][i] + odd[q][i] + bias[q][i]);
                // dt >= 0 and A < 0: the argument is never positive.
                let decay = exp_core_with::<F>(dt * a[q][i]);
                h[q][i] = F::fma(decay, h[q][i], dt * u[q][i] * bv);
                acc[q][i] = F::fma(h[q][i], cv, dskip[q][i] * u[q][i]);
            }
        }
        for q in 0..PAIR {
            let at = (img * hw + walks[q].lands(pixels[q], hw)) * di + d0;
            // SAFETY: as in `scan_block`.
            unsafe { add_to::<FULL>(y, at, nc, acc[q]) }
        }
    }
}

#[inline(always)]
fn scan_task<F: Fma>(s: &CrossScan, img: usize, d0: usize, y: SharedMut) {
    let nc = (s.di - d0).min(LANES);
    // d_state 1: directions in pairs; any other d_state (whose states give the
    // CPU independent chains already), and an odd direction out, one at a time.
    let paired = if s.n == 1 {
        s.paths.len() / PAIR * PAIR
    } else {
        0
    };
    for k0 in (0..paired).step_by(PAIR) {
        if nc == LANES {
            scan_pair::<F, true>(s, img, d0, nc, k0, y);
        } else {
            scan_pair::<F, false>(s, img, d0, nc, k0, y);
        }
    }
    for k in paired..s.paths.len() {
        if nc == LANES {
            scan_block::<F, true>(s, img, d0, nc, k, y);
        } else {
            scan_block::<F, false>(s, img, d0, nc, k, y);
        }
    }
}

dispatch_fma!(fn scan_task_dispatch(s: &CrossScan, img: usize, d0: usize, y: SharedMut) => scan_task);

/// Multi-direction selective scan with its merge: adds every direction's output
/// into `y` (B*L, Di), which the caller zeroes first.
pub fn cross_selective_scan(s: &CrossScan, y: &mut [f32]) {
    s.check();
    assert_eq!(y.len(), s.u.len(), "y"); // (B*L, Di), as u
    let blocks = s.di.div_ceil(LANES);
    let yp = SharedMut(y.as_mut_ptr());
    (0..s.batch * blocks).into_par_iter().for_each(|t| {
        let (img, blk) = (t / blocks, t % blocks);
        // Tasks own disjoint (image, channel block) pairs, so their writes to y never overlap.
        scan_task_dispatch(s, img, blk * LANES, yp);
    });
}

/// The same computation from the plain recurrence: each direction's sequences
/// gathered along its path, `selective_scan_ref`, and the outputs added back
/// where the path puts them. Returns y (B*L, Di).
pub fn cross_selective_scan_ref(s: &CrossScan) -> Vec<f32> {
    s.check();
    let (hw, di, n, r, k) = (s.h * s.w, s.di, s.n, s.r, s.paths.len());
    let xs = k * (r + 2 * n);
    let mut y = vec![0.0f32; s.batch * hw * di];
    for img in 0..s.batch {
        let rows = img * hw;
        // The official layouts: u, delta (K*Di, L); B, C (K, N, L).
        let mut us = vec![0.0f32; k * di * hw];
        let mut delta = vec![0.0f32; k * di * hw];
        let mut b = vec![0.0f32; k * n * hw];
        let mut c = vec![0.0f32; k * n * hw];
        for (kk, path) in s.paths.iter().enumerate() {
            for t in 0..hw {
                let p = path.position(t, s.h, s.w);
                let dt = &s.xdbl[(rows + p) * xs + kk * (r + 2 * n)..][..r];
                for ch in 0..di {
                    us[(kk * di + ch) * hw + t] = s.u[(rows + p) * di + ch];
                    let w = &s.dt_weight[(kk * di + ch) * r..][..r];
                    let proj: f64 = dt.iter().zip(w).map(|(&a, &b)| a as f64 * b as f64).sum();
                    delta[(kk * di + ch) * hw + t] = proj as f32;
                }
                let base = (rows + p) * xs + kk * (r + 2 * n) + r;
                for st in 0..n {
                    b[(kk * n + st) * hw + t] = s.xdbl[base + st];
                    c[(kk * n + st) * hw + t] = s.xdbl[base + n + st];
                }
            }
        }
        let ys = selective_scan_ref(&us, &delta, s.a, &b, &c, s.d, s.bias, k, n, hw);
        for (kk, path) in s.paths.iter().enumerate() {
            for t in 0..hw {
                let p = path.out_position(t, s.h, s.w);
                for ch in 0..di {
                    y[(rows + p) * di + ch] += ys[(kk * di + ch) * hw + t];
                }
            }
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{max_abs_diff, randn};

    fn check(batch: usize, h: usize, w: usize, di: usize, n: usize, r: usize) {
        for paths in [
            &ScanPath::CROSS[..],
            &ScanPath::ROT,
            &ScanPath::BIDI,
            &[ScanPath::Raster, ScanPath::RasterRevUnflipped],
        ] {
            check_paths(paths, batch, h, w, di, n, r);
        }
    }

    fn check_paths(
        paths: &[ScanPath],
        batch: usize,
        h: usize,
        w: usize,
        di: usize,
        n: usize,
        r: usize,
    ) {
        let (rows, k) = (batch * h * w, paths.len());
        let u = randn(rows * di, 1);
        let dt_weight: Vec<f32> = randn(k * di * r, 2).iter().map(|v| v * 0.5).collect();
        let xdbl = randn(rows * k * (r + 2 * n), 3);
        let a: Vec<f32> = randn(k * di * n, 4).iter().map(|v| -v.exp()).collect();
        let d = randn(k * di, 5);
        let bias = randn(k * di, 6);
        let s = CrossScan {
            paths,
            batch,
            h,
            w,
            di,
            n,
            r,
            u: &u,
            xdbl: &xdbl,
            dt_weight: &dt_weight,
            a: &a,
            d: &d,
            bias: &bias,
        };
        let want = cross_selective_scan_ref(&s);
        let mut got = vec![0.0f32; rows * di];
        cross_selective_scan(&s, &mut got);
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(
            max_abs_diff(&got, &want) <= 2e-5 * scale,
            "{paths:?} B{batch} {h}x{w} Di{di} N{n}"
        );
    }

    #[test]
    fn fused_scan_matches_reference_d_state_1() {
        check(2, 5, 7, 40, 1, 3);
        check(1, 8, 8, 16, 1, 1);
        check(1, 4, 6, 20, 1, 4);
        // An odd number of directions: two side by side, the third alone.
        let three = [
            ScanPath::Raster,
            ScanPath::Transposed,
            ScanPath::RasterRevUnflipped,
        ];
        check_paths(&three, 2, 3, 5, 24, 1, 2);
    }

    #[test]
    fn fused_scan_matches_reference_d_state_16() {
        check(1, 6, 3, 24, 16, 2);
        check(2, 1, 9, 3, 16, 1);
    }
}
