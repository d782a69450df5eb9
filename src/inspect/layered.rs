//! Where to put the boxes of a small DAG so it reads top to bottom without Graphviz
//! (which a user's machine may lack): longest-path layers, sources moved down to just
//! above their first consumer, and within a layer each box pulled toward the mean
//! position of its neighbours, never overlapping.
//!
//! In: box widths and edges `(from, to)` with `from < to` (nodes numbered in a
//! topological order). Out: each box's top-left corner and the drawing's size.

pub const BOX_H: f64 = 34.0;
const GAP_X: f64 = 18.0;
const GAP_Y: f64 = 38.0;
const MARGIN: f64 = 10.0;
/// Enough for the boxes of a few dozen nodes to settle.
const SWEEPS: usize = 8;

#[derive(Debug)]
pub struct Layout {
    /// Top-left corner of each box.
    pub pos: Vec<(f64, f64)>,
    pub width: f64,
    pub height: f64,
}

pub fn layout(widths: &[f64], edges: &[(usize, usize)]) -> Layout {
    let n = widths.len();
    let mut neighbours: Vec<Vec<usize>> = vec![vec![]; n];
    for &(a, b) in edges {
        debug_assert!(a < b, "edges follow the topological numbering");
        neighbours[a].push(b);
        neighbours[b].push(a);
    }
    let rank = ranks(n, edges);
    let mut layers: Vec<Vec<usize>> = vec![vec![]; rank.iter().max().map_or(0, |m| m + 1)];
    for (v, &r) in rank.iter().enumerate() {
        layers[r].push(v);
    }
    // Centres; a first packing so that every node has a position to be pulled toward.
    let mut x = vec![0.0; n];
    for layer in &layers {
        place(layer, widths, &mut x, &vec![0.0; layer.len()]);
    }
    for sweep in 0..SWEEPS {
        let order: Vec<usize> =
            if sweep % 2 == 0 { (0..layers.len()).collect() } else { (0..layers.len()).rev().collect() };
        for l in order {
            let wanted: Vec<f64> = layers[l]
                .iter()
                .map(|&v| {
                    let near = &neighbours[v];
                    if near.is_empty() {
                        x[v]
                    } else {
                        near.iter().map(|&u| x[u]).sum::<f64>() / near.len() as f64
                    }
                })
                .collect();
            let mut pairs: Vec<(usize, f64)> = layers[l].iter().copied().zip(wanted).collect();
            pairs.sort_by(|a, b| a.1.total_cmp(&b.1));
            layers[l] = pairs.iter().map(|p| p.0).collect();
            place(&layers[l], widths, &mut x, &pairs.iter().map(|p| p.1).collect::<Vec<_>>());
        }
    }
    let left = (0..n).map(|v| x[v] - widths[v] / 2.0).fold(f64::INFINITY, f64::min);
    let right = (0..n).map(|v| x[v] + widths[v] / 2.0).fold(f64::NEG_INFINITY, f64::max);
    let pos =
        (0..n).map(|v| (x[v] - widths[v] / 2.0 - left + MARGIN, MARGIN + rank[v] as f64 * (BOX_H + GAP_Y))).collect();
    Layout {
        pos,
        width: if n == 0 { 2.0 * MARGIN } else { right - left + 2.0 * MARGIN },
        height: 2.0 * MARGIN + (layers.len() as f64 * (BOX_H + GAP_Y) - GAP_Y).max(0.0),
    }
}

/// Longest path from a source, then each source one layer above its nearest consumer
/// (weights and inputs sit beside the op that reads them, not all on the top row).
fn ranks(n: usize, edges: &[(usize, usize)]) -> Vec<usize> {
    let mut rank = vec![0usize; n];
    let mut sorted = edges.to_vec();
    sorted.sort_by_key(|e| e.1);
    for &(a, b) in &sorted {
        rank[b] = rank[b].max(rank[a] + 1);
    }
    let has_pred: Vec<bool> = (0..n).map(|v| edges.iter().any(|e| e.1 == v)).collect();
    for v in (0..n).filter(|&v| !has_pred[v]) {
        if let Some(m) = edges.iter().filter(|e| e.0 == v).map(|e| rank[e.1]).min() {
            rank[v] = m - 1;
        }
    }
    rank
}

/// Puts the boxes of one layer, in this order, as near their wanted centres as they can
/// be without overlapping: pushed apart left to right, then the row shifted so that on
/// average it sits where it was wanted.
fn place(layer: &[usize], widths: &[f64], x: &mut [f64], wanted: &[f64]) {
    let mut right_edge = f64::NEG_INFINITY;
    for (&v, &want) in layer.iter().zip(wanted) {
        x[v] = want.max(right_edge + GAP_X + widths[v] / 2.0);
        right_edge = x[v] + widths[v] / 2.0;
    }
    let shift = layer.iter().zip(wanted).map(|(&v, &w)| w - x[v]).sum::<f64>() / layer.len().max(1) as f64;
    for &v in layer {
        x[v] += shift;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_never_overlap_and_every_edge_points_down() {
        // A diamond with a weight feeding the middle, plus a long edge.
        let widths = [60.0, 80.0, 120.0, 70.0, 90.0, 50.0];
        let edges = [(0, 2), (1, 2), (1, 3), (2, 4), (3, 4), (0, 5), (4, 5)];
        let l = layout(&widths, &edges);
        for &(a, b) in &edges {
            assert!(l.pos[a].1 + BOX_H < l.pos[b].1, "edge {a}->{b} does not point down: {l:?}");
        }
        for a in 0..widths.len() {
            for b in a + 1..widths.len() {
                let (pa, pb) = (l.pos[a], l.pos[b]);
                let apart_x = pa.0 + widths[a] <= pb.0 || pb.0 + widths[b] <= pa.0;
                assert!(pa.1 != pb.1 || apart_x, "boxes {a} and {b} overlap: {l:?}");
            }
            assert!(l.pos[a].0 >= 0.0 && l.pos[a].0 + widths[a] <= l.width && l.pos[a].1 + BOX_H <= l.height);
        }
        assert!(l.pos[5].1 > l.pos[4].1);
    }

    #[test]
    fn a_source_sits_just_above_its_reader() {
        // 0 -> 2 -> 3, and 1 (a weight) read by 3 only: 1 belongs on layer 1, not on top.
        let l = layout(&[50.0; 4], &[(0, 2), (2, 3), (1, 3)]);
        assert_eq!(l.pos[1].1, l.pos[2].1);
        assert!(l.pos[0].1 < l.pos[1].1);
    }
}
