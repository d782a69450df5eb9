//! Where to put the boxes of a small DAG so it reads top to bottom without Graphviz
//! (which a user's machine may lack): longest-path layers, sources moved down to just
//! above their first consumer, an edge that skips layers bent through a slot of its
//! own in each layer it crosses (so it never runs behind a box), and within a layer
//! each box pulled toward the mean position of its neighbours, never overlapping.
//!
//! In: box widths and edges `(from, to)` with `from < to` (nodes numbered in a
//! topological order). Out: each box's top-left corner, each edge's route, and the
//! drawing's size.

pub const BOX_H: f64 = 34.0;
const GAP_X: f64 = 18.0;
const GAP_Y: f64 = 38.0;
const MARGIN: f64 = 10.0;
/// The slot a bent edge takes in a layer it crosses.
const BEND_W: f64 = 4.0;
/// Enough for the boxes of a few dozen nodes to settle.
const SWEEPS: usize = 8;

#[derive(Debug)]
pub struct Layout {
    /// Top-left corner of each box.
    pub pos: Vec<(f64, f64)>,
    /// Per edge, in the order given: the points from the bottom of its source to the
    /// top of its target.
    pub routes: Vec<Vec<(f64, f64)>>,
    pub width: f64,
    pub height: f64,
}

pub fn layout(widths: &[f64], edges: &[(usize, usize)]) -> Layout {
    let n = widths.len();
    let rank = ranks(n, edges);
    // Boxes, then one bend per layer crossed by a long edge; chains[e] is edge e's path.
    let mut w = widths.to_vec();
    let mut layer_of = rank.clone();
    let mut chains: Vec<Vec<usize>> = vec![];
    for &(a, b) in edges {
        debug_assert!(a < b, "edges follow the topological numbering");
        let mut chain = vec![a];
        for r in rank[a] + 1..rank[b] {
            chain.push(w.len());
            w.push(BEND_W);
            layer_of.push(r);
        }
        chain.push(b);
        chains.push(chain);
    }
    // Every link of every chain joins adjacent layers.
    let mut above: Vec<Vec<usize>> = vec![vec![]; w.len()];
    let mut below: Vec<Vec<usize>> = vec![vec![]; w.len()];
    for pair in chains.iter().flat_map(|c| c.windows(2)) {
        below[pair[0]].push(pair[1]);
        above[pair[1]].push(pair[0]);
    }
    let mut layers: Vec<Vec<usize>> = vec![vec![]; layer_of.iter().max().map_or(0, |m| m + 1)];
    for (v, &r) in layer_of.iter().enumerate() {
        layers[r].push(v);
    }
    let x = centres(&mut layers, &w, &above, &below);
    let left = (0..w.len()).map(|v| x[v] - w[v] / 2.0).fold(f64::INFINITY, f64::min);
    let right = (0..w.len()).map(|v| x[v] + w[v] / 2.0).fold(f64::NEG_INFINITY, f64::max);
    let at = |v: usize| x[v] - left + MARGIN;
    let top = |r: usize| MARGIN + r as f64 * (BOX_H + GAP_Y);
    let routes = chains
        .iter()
        .map(|c| {
            let (a, b) = (c[0], c[c.len() - 1]);
            let mut points = vec![(at(a), top(rank[a]) + BOX_H)];
            for &v in &c[1..c.len() - 1] {
                points.extend([(at(v), top(layer_of[v])), (at(v), top(layer_of[v]) + BOX_H)]);
            }
            points.push((at(b), top(rank[b])));
            points
        })
        .collect();
    Layout {
        pos: (0..n).map(|v| (at(v) - w[v] / 2.0, top(rank[v]))).collect(),
        routes,
        width: if n == 0 { 2.0 * MARGIN } else { right - left + 2.0 * MARGIN },
        height: 2.0 * MARGIN + (layers.len() as f64 * (BOX_H + GAP_Y) - GAP_Y).max(0.0),
    }
}

/// The centre of every box and bend. First the order within each layer: sweeps down
/// and up, each sorting a layer by where its neighbours in the layer before are, keeping
/// the order with the fewest crossings. Then the positions: each box as near the mean
/// of all its neighbours as it fits.
fn centres(layers: &mut [Vec<usize>], w: &[f64], above: &[Vec<usize>], below: &[Vec<usize>]) -> Vec<f64> {
    let mut x = vec![0.0; w.len()];
    for layer in layers.iter() {
        place(layer, w, &mut x, &vec![0.0; layer.len()]);
    }
    let mean_x = |x: &[f64], near: &[usize], own: f64| {
        if near.is_empty() {
            own
        } else {
            near.iter().map(|&u| x[u]).sum::<f64>() / near.len() as f64
        }
    };
    let mut best = (crossings(layers, below), layers.to_vec());
    for sweep in 0..SWEEPS {
        let down = sweep % 2 == 0;
        let order: Vec<usize> =
            if down { (1..layers.len()).collect() } else { (0..layers.len()).rev().skip(1).collect() };
        for l in order {
            let side = if down { above } else { below };
            let mut pairs: Vec<(usize, f64)> = layers[l].iter().map(|&v| (v, mean_x(&x, &side[v], x[v]))).collect();
            pairs.sort_by(|a, b| a.1.total_cmp(&b.1));
            layers[l] = pairs.iter().map(|p| p.0).collect();
            place(&layers[l], w, &mut x, &pairs.iter().map(|p| p.1).collect::<Vec<_>>());
        }
        let c = crossings(layers, below);
        if c < best.0 {
            best = (c, layers.to_vec());
        }
    }
    layers.clone_from_slice(&best.1);
    for layer in layers.iter() {
        place(layer, w, &mut x, &vec![0.0; layer.len()]);
    }
    for sweep in 0..SWEEPS {
        let order: Vec<usize> =
            if sweep % 2 == 0 { (0..layers.len()).collect() } else { (0..layers.len()).rev().collect() };
        for l in order {
            let wanted: Vec<f64> = layers[l]
                .iter()
                .map(|&v| mean_x(&x, &[above[v].as_slice(), below[v].as_slice()].concat(), x[v]))
                .collect();
            place(&layers[l], w, &mut x, &keep_order(&wanted));
        }
    }
    x
}

/// Wanted positions made non-decreasing, so placing them keeps the layer's order.
fn keep_order(wanted: &[f64]) -> Vec<f64> {
    let mut out = wanted.to_vec();
    for k in 1..out.len() {
        out[k] = out[k].max(out[k - 1]);
    }
    out
}

/// Pairs of links between the same two layers that cross.
fn crossings(layers: &[Vec<usize>], below: &[Vec<usize>]) -> usize {
    let mut slot = vec![0usize; below.len()];
    for layer in layers {
        for (k, &v) in layer.iter().enumerate() {
            slot[v] = k;
        }
    }
    let mut count = 0;
    for layer in layers {
        let links: Vec<(usize, usize)> = layer
            .iter()
            .flat_map(|&u| below[u].iter().map(move |&v| (u, v)))
            .map(|(u, v)| (slot[u], slot[v]))
            .collect();
        for (i, a) in links.iter().enumerate() {
            count += links[i + 1..].iter().filter(|b| (a.0 < b.0 && a.1 > b.1) || (a.0 > b.0 && a.1 < b.1)).count();
        }
    }
    count
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
        // The long edge 0 -> 5 bends around the boxes of the layers it crosses.
        let route = &l.routes[5];
        assert_eq!(route.len(), 2 + 2 * 2, "two layers crossed: {route:?}");
        for &(x, y) in &route[1..route.len() - 1] {
            for (b, &(bx, by)) in l.pos.iter().enumerate() {
                let inside = x > bx && x < bx + widths[b] && y >= by && y <= by + BOX_H;
                assert!(!inside, "edge 0->5 runs through box {b}: {l:?}");
            }
        }
    }

    #[test]
    fn a_source_sits_just_above_its_reader() {
        // 0 -> 2 -> 3, and 1 (a weight) read by 3 only: 1 belongs on layer 1, not on top.
        let l = layout(&[50.0; 4], &[(0, 2), (2, 3), (1, 3)]);
        assert_eq!(l.pos[1].1, l.pos[2].1);
        assert!(l.pos[0].1 < l.pos[1].1);
    }
}
