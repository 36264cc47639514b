//! Placement: which member is a key's master, by rendezvous
//! (highest-random-weight) hashing over the member ids.
//!
//! Every node computes it alone from the member ids, so every node agrees
//! without talking. Adding or removing a member moves only the keys whose
//! highest weight belonged to it: about 1/N of them.
//!
//! The hash is FNV-1a over `member id | 0xFF | key`, finished with the
//! splitmix64 mixer. It is fixed here, not taken from the standard library,
//! because nodes built by different compiler versions must agree on it.

/// A key's weight on one member.
pub fn weight(member_id: &str, key: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for b in member_id
        .bytes()
        .chain(std::iter::once(0xFF))
        .chain(key.bytes())
    {
        h ^= b as u64;
        h = h.wrapping_mul(PRIME);
    }
    mix(h)
}

/// splitmix64's finaliser: spreads FNV's weak low bits over the word.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The index of `key`'s master among `member_ids` (ties, which need a hash
/// collision, go to the smaller id). `None` only when there are no members.
pub fn master_index<'a>(member_ids: impl IntoIterator<Item = &'a str>, key: &str) -> Option<usize> {
    member_ids
        .into_iter()
        .enumerate()
        .map(|(i, id)| (weight(id, key), std::cmp::Reverse(id), i))
        .max()
        .map(|(_, _, i)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ids(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("n{i}")).collect()
    }

    fn master<'a>(members: &'a [String], key: &str) -> &'a str {
        &members[master_index(members.iter().map(String::as_str), key).unwrap()]
    }

    #[test]
    fn the_hash_is_pinned() {
        // Nodes of different builds must agree: these values never change
        // (computed independently from the definition above).
        let pinned = [weight("n1", "a"), weight("n2", "a"), weight("n1", "")];
        assert_eq!(
            pinned,
            [
                0x0f9f_51ec_d2d3_5e43,
                0x17e2_0881_175d_eca2,
                0xb32b_9d3b_fd88_22a7
            ]
        );
    }

    #[test]
    fn keys_spread_evenly() {
        for n in [3usize, 5, 7] {
            let members = ids(n);
            let mut counts = vec![0usize; n];
            let keys = 70_000;
            for k in 0..keys {
                let key = format!("key-{k}");
                let i = master_index(members.iter().map(String::as_str), &key).unwrap();
                counts[i] += 1;
            }
            let expected = keys / n;
            for (i, c) in counts.iter().enumerate() {
                let off = (*c as f64 - expected as f64).abs() / expected as f64;
                assert!(
                    off < 0.05,
                    "{n} members: member {i} has {c} keys, expected ~{expected}"
                );
            }
        }
    }

    #[test]
    fn adding_a_member_moves_about_one_nth() {
        for n in [3usize, 4, 9] {
            let before = ids(n);
            let after = ids(n + 1);
            let keys = 50_000;
            let mut moved = 0;
            for k in 0..keys {
                let key = format!("k{k}");
                let (a, b) = (master(&before, &key), master(&after, &key));
                if a != b {
                    // A key only ever moves to the new member.
                    assert_eq!(b, after[n], "key {key} moved from {a} to {b}");
                    moved += 1;
                }
            }
            let share = moved as f64 / keys as f64;
            let ideal = 1.0 / (n + 1) as f64;
            assert!(
                (share - ideal).abs() < 0.02,
                "{n}->{} members moved {share:.3}, ideal {ideal:.3}",
                n + 1
            );
        }
    }

    proptest! {
        #[test]
        fn member_order_does_not_matter(key in "\\PC{0,40}", rot in 0usize..5) {
            let members = ids(5);
            let mut rotated = members.clone();
            rotated.rotate_left(rot);
            prop_assert_eq!(master(&members, &key), master(&rotated, &key));
        }
    }
}
