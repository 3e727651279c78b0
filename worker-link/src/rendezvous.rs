//! Which workers a deployment goes to: rendezvous hashing over worker ids, the one ranking
//! shared by routers (where a request goes), workers (what they prewarm) and the control
//! plane (which workers build a deployment and may read its env).
//!
//! Each worker scores each deployment; the highest score is the deployment's home, the
//! next ones where it spills under load or fails over. A worker joining or leaving moves
//! only the deployments it takes or held, so the others stay warm where they are. The
//! hashes are part of the protocol: routers and control planes of different versions must
//! rank alike, so they must not change.

/// How many workers a router tries for a request, in rendezvous order.
pub const MAX_CANDIDATES: usize = 4;

/// How many of a deployment's top-ranked workers the control plane gives its env to:
/// twice what a router tries, so that a router whose top workers are momentarily down (or
/// whose table is a version behind) still lands on a worker the control plane agrees on.
pub const ENV_CANDIDATES: usize = 2 * MAX_CANDIDATES;

/// FNV-1a, 64 bits.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A 64-bit finalizer (splitmix64), so that nearby inputs spread.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A worker's half of its scores: computed once per worker, when a table is indexed.
pub fn worker_seed(worker_id: &str) -> u64 {
    fnv1a(worker_id.as_bytes())
}

/// A deployment's half of its scores.
pub fn deployment_key(deployment_id: &str) -> u64 {
    fnv1a(deployment_id.as_bytes())
}

/// The score of a worker (its [`worker_seed`]) for a deployment (its [`deployment_key`]):
/// the higher, the earlier the worker comes for it.
pub fn score(seed: u64, key: u64) -> u64 {
    mix(seed ^ key)
}

/// `items` (workers, named by `id`) in rendezvous order for `deployment_id`: highest score
/// first, equal scores (colliding ids) by id, so that every ranking of the same workers
/// agrees whatever order they came in.
pub fn rank<'a, T: 'a>(
    items: impl IntoIterator<Item = &'a T>,
    id: impl Fn(&T) -> &str,
    deployment_id: &str,
) -> Vec<&'a T> {
    let key = deployment_key(deployment_id);
    let mut ranked: Vec<(u64, &'a T)> = items
        .into_iter()
        .map(|item| (score(worker_seed(id(item)), key), item))
        .collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| id(a.1).cmp(id(b.1))));
    ranked.into_iter().map(|(_, item)| item).collect()
}

/// Whether `worker_id` is among the first `n` of `worker_ids` ranked for `deployment_id`
/// (false when it is not one of them): as [`rank`] would say, without sorting, since it is
/// asked per deployment of a whole table.
pub fn is_among_first<'a>(
    n: usize,
    worker_ids: impl IntoIterator<Item = &'a str>,
    worker_id: &str,
    deployment_id: &str,
) -> bool {
    let key = deployment_key(deployment_id);
    let mine = score(worker_seed(worker_id), key);
    let mut listed = false;
    let mut ahead = 0usize;
    for id in worker_ids {
        if id == worker_id {
            listed = true;
            continue;
        }
        let theirs = score(worker_seed(id), key);
        if theirs > mine || (theirs == mine && id < worker_id) {
            ahead += 1;
            if ahead >= n {
                return false;
            }
        }
    }
    listed && ahead < n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workers(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("w{i:02}")).collect()
    }

    fn ranked(ids: &[String], deployment_id: &str) -> Vec<String> {
        rank(ids, |id| id.as_str(), deployment_id)
            .into_iter()
            .cloned()
            .collect()
    }

    #[test]
    fn the_order_is_stable_and_the_hashes_do_not_change() {
        // Routers and control planes of different versions must rank alike.
        assert_eq!(worker_seed("w1"), 0x08cb_8707_b56d_7b05);
        assert_eq!(deployment_key("dep_a"), 0x7583_ea76_006a_589e);
        assert_eq!(
            score(worker_seed("w1"), deployment_key("dep_a")),
            0x76f4_b3eb_dccd_d5cf
        );
        let three: Vec<String> = ["w1", "w2", "w3"].map(String::from).to_vec();
        for (d, want) in [
            ("dep_a", ["w1", "w2", "w3"]),
            ("dep_b", ["w2", "w1", "w3"]),
            ("dep_c", ["w1", "w3", "w2"]),
            ("dep_d", ["w2", "w3", "w1"]),
        ] {
            assert_eq!(ranked(&three, d), want, "{d}");
        }
        // Whatever order the workers are listed in.
        let ids = workers(12);
        let mut reversed = ids.clone();
        reversed.reverse();
        for i in 0..100 {
            let d = format!("dep_{i}");
            let order = ranked(&ids, &d);
            assert_eq!(order.len(), ids.len());
            assert_eq!(ranked(&reversed, &d), order, "{d}");
        }
    }

    #[test]
    fn only_the_deployments_of_a_leaving_worker_move() {
        let all = workers(12);
        let leaving = "w05";
        let staying: Vec<String> = all.iter().filter(|w| *w != leaving).cloned().collect();
        let mut moved = 0;
        for i in 0..600 {
            let d = format!("dep_{i}");
            let before = ranked(&all, &d);
            let after = ranked(&staying, &d);
            // The others keep their order: only the leaving worker drops out.
            let without: Vec<String> = before.iter().filter(|w| *w != leaving).cloned().collect();
            assert_eq!(after, without, "{d}");
            if before[0] == leaving {
                moved += 1;
            } else {
                assert_eq!(after[0], before[0], "{d} moved although its home stayed");
            }
        }
        // About one in twelve had its home there.
        assert!((20..=80).contains(&moved), "{moved} of 600 moved");
    }

    #[test]
    fn a_worker_far_down_the_order_is_not_a_candidate() {
        const { assert!(MAX_CANDIDATES < ENV_CANDIDATES) };
        let all = workers(12);
        let ids = || all.iter().map(String::as_str);
        for i in 0..50 {
            let d = format!("dep_{i}");
            let order = ranked(&all, &d);
            for (place, w) in order.iter().enumerate() {
                assert_eq!(
                    is_among_first(ENV_CANDIDATES, ids(), w, &d),
                    place < ENV_CANDIDATES,
                    "{w} is number {place} for {d}"
                );
                assert_eq!(
                    is_among_first(MAX_CANDIDATES, ids(), w, &d),
                    place < MAX_CANDIDATES,
                    "{w} is number {place} for {d}"
                );
            }
            assert!(!is_among_first(ENV_CANDIDATES, ids(), "stranger", &d));
        }
        // Fewer workers than candidates: every one is.
        let few = workers(3);
        for w in &few {
            assert!(is_among_first(
                ENV_CANDIDATES,
                few.iter().map(String::as_str),
                w,
                "dep_x"
            ));
        }
    }
}
