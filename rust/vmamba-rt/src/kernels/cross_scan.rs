//! Reference cross-scan and cross-merge (docs/model.md §5, steps 1 and 4) on
//! channel-first maps, as the official implementation lays them out. The fast
//! path never materialises these copies: it walks the four orders inside the
//! scan (`scan::cross_selective_scan`). These exist to test that path.

/// Position in the image (row-major `h*W + w`) of sequence step `l` of direction `k`.
pub fn position(k: usize, l: usize, h: usize, w: usize) -> usize {
    crate::variant::ScanPath::CROSS[k].position(l, h, w)
}

/// x (C, H, W) -> xs (4, C, L): the four scan orders.
pub fn cross_scan_ref(x: &[f32], c: usize, h: usize, w: usize) -> Vec<f32> {
    let l = h * w;
    let mut xs = vec![0.0f32; 4 * c * l];
    for k in 0..4 {
        for ch in 0..c {
            for s in 0..l {
                xs[(k * c + ch) * l + s] = x[ch * l + position(k, s, h, w)];
            }
        }
    }
    xs
}

/// ys (4, C, L) in each direction's sequence order -> y (C, L) row-major, summed.
pub fn cross_merge_ref(ys: &[f32], c: usize, h: usize, w: usize) -> Vec<f32> {
    let l = h * w;
    let mut y = vec![0.0f32; c * l];
    for k in 0..4 {
        for ch in 0..c {
            for s in 0..l {
                y[ch * l + position(k, s, h, w)] += ys[(k * c + ch) * l + s];
            }
        }
    }
    y
}
