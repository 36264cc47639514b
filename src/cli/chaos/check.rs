//! The checks of a chaos run, over the recorded history, the wipes and the
//! converged final state. Pure functions, so the rules can be unit-tested;
//! docs/CHAOS.md states them in prose.
//!
//! Every write in the history has an **effect**:
//!
//! - `Yes(v)`: acknowledged (PUT 200/201, DELETE 204) with version `v`;
//! - `No`: certainly not applied (412, 404 on DELETE, a refusal);
//! - `Maybe`: the answer was lost. Its version is unknown, and it may have
//!   been applied at any time from its start until `end + LATE_APPLY`
//!   (`latest`), or until the end of the run when it timed out
//!   (`latest = None`).
//!
//! A wipe can legitimately lose what only the wiped node held. An
//! acknowledged write that started before the kill becomes `Maybe` with its
//! known version ("exposed by the wipe") unless its master is another node
//! not wiped since (which holds it durably), or the other nodes held it or
//! something newer: the greatest version the other nodes held of the key
//! (value or tombstone) decides what the key becomes, so a PUT is exposed
//! when that is older than the PUT, a DELETE when that is an older live
//! value (or some node could not be read).
//!
//! For each key, `A` is the acknowledged write (`Yes`) with the greatest
//! version. A write `X` **may follow** `A` when `X` is `Maybe` with a known
//! version greater than `A`'s, or `Maybe` with an unknown version and
//! `latest(X) >= start(A)` (it could have reached the master after `A`).
//! The final state of the key must be `A`'s (its value, or absent for a
//! DELETE), or that of a write that may follow `A`; with no `A`, absent or
//! the value of any write that is not `No`. A failure is (b) a lost write
//! when `A` is a PUT (or there is none), (c) a resurrection when `A` is a
//! DELETE and a value is there.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::history::{show_version, Kind, Micros, Op, Outcome};
use crate::node::version::Version;

/// How long after a client saw a broken connection (or a 503 with
/// `applied: "unknown"`) its request may still be applied: the longest a
/// request can sit in a stopped node (`MAX_PAUSE`, 3 s), in a slow link
/// (a few chunks of at most 200 ms), or in a master's commit queue, with a
/// wide margin.
pub const LATE_APPLY: Micros = 10_000_000;

/// A wipe: node `node` was killed at `kill` (the process was gone), and the
/// other nodes then held `held`: per key, the greatest version among them
/// and whether it is a live value (`false`: a tombstone).
#[derive(Debug, Clone)]
pub struct Wipe {
    pub node: usize,
    pub kill: Micros,
    pub held: HashMap<String, (Version, bool)>,
    /// Some other node could not be read.
    pub unreadable: bool,
}

/// A key's converged state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Final {
    Absent,
    Present {
        value: String,
        version: Option<Version>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// (a) the nodes did not converge.
    Convergence,
    /// (b) an acknowledged write is not in the final state.
    LostWrite,
    /// (c) a deleted key came back.
    Resurrection,
    /// (d) a read returned what nobody wrote (or a refused write).
    BadRead,
    /// (e) version order contradicts real time.
    Order,
    /// (f) an answer the API does not allow.
    Protocol,
}

impl Check {
    pub fn label(self) -> &'static str {
        match self {
            Check::Convergence => "(a) convergence",
            Check::LostWrite => "(b) lost write",
            Check::Resurrection => "(c) resurrection",
            Check::BadRead => "(d) bad read",
            Check::Order => "(e) version order",
            Check::Protocol => "(f) protocol",
        }
    }

    pub const ALL: [Check; 6] = [
        Check::Convergence,
        Check::LostWrite,
        Check::Resurrection,
        Check::BadRead,
        Check::Order,
        Check::Protocol,
    ];
}

#[derive(Debug, Clone)]
pub struct Violation {
    pub check: Check,
    pub text: String,
}

pub struct Input<'a> {
    pub ops: &'a [Op],
    pub nodes: &'a [String],
    pub wipes: &'a [Wipe],
    /// Every key that is there (absent: `Final::Absent`); `None` when the
    /// nodes did not converge.
    pub final_state: Option<&'a BTreeMap<String, Final>>,
    /// Start of the run, for relative times.
    pub t0: Micros,
}

#[derive(Debug, Default)]
pub struct Output {
    pub violations: Vec<Violation>,
    /// Keys whose final state passes (b) and (c) only because a wipe
    /// exposed some of their writes: each with those writes and the index
    /// of the wipe that exposed each.
    pub forgiven: Vec<(String, Vec<(usize, usize)>)>,
    /// Writes with a lost answer, bounded and unbounded (timeouts).
    pub unknown_bounded: usize,
    pub unknown_unbounded: usize,
    pub reads_checked: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Eff {
    No,
    Yes(Version),
    Maybe {
        version: Option<Version>,
        latest: Option<Micros>,
    },
}

fn effect(op: &Op) -> Eff {
    match &op.outcome {
        Outcome::Written {
            version: Some(v), ..
        } => Eff::Yes(v.clone()),
        Outcome::Written { version: None, .. } | Outcome::Unexpected { .. } => Eff::Maybe {
            version: None,
            latest: None,
        },
        Outcome::Unknown { bounded, .. } => Eff::Maybe {
            version: None,
            latest: bounded.then(|| op.end.saturating_add(LATE_APPLY)),
        },
        Outcome::NotFound | Outcome::Refused { .. } | Outcome::Read { .. } => Eff::No,
    }
}

/// Runs every check but convergence (the caller knows whether the nodes
/// converged).
pub fn check(input: &Input) -> Output {
    let ops = input.ops;
    let mut out = Output::default();
    let describe = |op: &Op| op.describe(input.nodes, input.t0);
    let push = |out: &mut Output, check: Check, text: String| {
        out.violations.push(Violation { check, text });
    };

    // Effects, then the wipes' downgrades.
    let mut eff: Vec<Eff> = ops
        .iter()
        .map(|op| {
            if op.kind.is_write() {
                effect(op)
            } else {
                Eff::No
            }
        })
        .collect();
    for op in ops.iter().filter(|op| op.kind.is_write()) {
        if let Outcome::Unknown { bounded, .. } = op.outcome {
            if bounded {
                out.unknown_bounded += 1;
            } else {
                out.unknown_unbounded += 1;
            }
        }
    }
    let eff_before_wipes = eff.clone();
    let mut exposed_by: HashMap<usize, usize> = HashMap::new();
    for (w, wipe) in input.wipes.iter().enumerate() {
        for (i, op) in ops.iter().enumerate() {
            if op.start >= wipe.kill {
                continue;
            }
            let Eff::Yes(v) = &eff[i] else { continue };
            // Its master, if another node and not wiped since, still holds
            // it or something newer (an acknowledged write is durable
            // there, and a tombstone is only collected once every peer has
            // applied it).
            let master = input.nodes.iter().position(|n| *n == v.node);
            if master.is_some_and(|m| {
                m != wipe.node
                    && !input
                        .wipes
                        .iter()
                        .any(|w| w.node == m && w.kill > op.start && w.kill <= wipe.kill)
            }) {
                continue;
            }
            let held = wipe.held.get(&op.key);
            let exposed = match op.kind {
                // Lost unless another node held it or something newer.
                Kind::Put { .. } => held.is_none_or(|(h, _)| h < v),
                // Undone if the others' newest is an older live value.
                Kind::Delete => wipe.unreadable || held.is_some_and(|(h, live)| h < v && *live),
                Kind::Get { .. } => false,
            };
            if exposed {
                eff[i] = Eff::Maybe {
                    version: Some(v.clone()),
                    latest: None,
                };
                exposed_by.insert(i, w);
            }
        }
    }
    // Requests by key.
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, op) in ops.iter().enumerate() {
        by_key.entry(op.key.as_str()).or_default().push(i);
    }
    let no_ops: Vec<usize> = Vec::new();
    let on = |key: &str| by_key.get(key).unwrap_or(&no_ops).clone();

    // Every value is written by one request only.
    let mut by_value: HashMap<&str, usize> = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        if let Kind::Put { value, .. } = &op.kind {
            by_value.insert(value.as_str(), i);
        }
    }

    // (f) answers the API does not allow.
    for op in ops {
        match &op.outcome {
            Outcome::Unexpected { .. } => push(
                &mut out,
                Check::Protocol,
                format!("an answer the API does not document: {}", describe(op)),
            ),
            Outcome::Written { version: None, .. } => push(
                &mut out,
                Check::Protocol,
                format!(
                    "a write acknowledged without a valid ETag: {}",
                    describe(op)
                ),
            ),
            Outcome::Read { version: None, .. } => push(
                &mut out,
                Check::Protocol,
                format!("a GET 200 without a valid ETag: {}", describe(op)),
            ),
            _ => {}
        }
    }

    // (d) every value read was written (or attempted) to that key, not
    // refused, not before it was sent, and with its acknowledged version.
    for op in ops {
        let Outcome::Read { value, version } = &op.outcome else {
            continue;
        };
        out.reads_checked += 1;
        let Some(&w) = by_value.get(value.as_str()) else {
            push(
                &mut out,
                Check::BadRead,
                format!("read a value no client wrote: {}", describe(op)),
            );
            continue;
        };
        let wop = &ops[w];
        let problem = if wop.key != op.key {
            Some("read the value of another key")
        } else if eff[w] == Eff::No {
            Some("read the value of a write that was refused")
        } else if wop.start > op.end {
            Some("read a value before its write was sent")
        } else {
            match (&wop.outcome, version) {
                (
                    Outcome::Written {
                        version: Some(vw), ..
                    },
                    Some(vr),
                ) if vw != vr => {
                    Some("read a value with another version than its write was acknowledged with")
                }
                _ => None,
            }
        };
        if let Some(problem) = problem {
            push(
                &mut out,
                Check::BadRead,
                format!("{problem}: {}; the write: {}", describe(op), describe(wop)),
            );
        }
    }

    // (e) per key, acknowledged versions follow real time: a write that
    // started after another was acknowledged has a greater version.
    for key in by_key.keys() {
        let mut acked: Vec<(usize, &Version)> = on(key)
            .into_iter()
            .map(|i| (i, &ops[i]))
            .filter(|(_, op)| op.kind.is_write())
            .filter_map(|(i, op)| match &op.outcome {
                Outcome::Written {
                    version: Some(v), ..
                } => Some((i, v)),
                _ => None,
            })
            .collect();
        let mut seen: HashMap<&Version, usize> = HashMap::new();
        for &(i, v) in &acked {
            if let Some(&j) = seen.get(v) {
                push(
                    &mut out,
                    Check::Order,
                    format!(
                        "two writes acknowledged with the same version: {}; {}",
                        describe(&ops[j]),
                        describe(&ops[i])
                    ),
                );
            }
            seen.insert(v, i);
        }
        let mut by_start = acked.clone();
        by_start.sort_by_key(|&(i, _)| ops[i].start);
        acked.sort_by_key(|&(i, _)| ops[i].end);
        let mut next = 0;
        let mut max: Option<(usize, &Version)> = None;
        for &(i, v) in &by_start {
            while next < acked.len() && ops[acked[next].0].end < ops[i].start {
                let cand = acked[next];
                if max.is_none_or(|(_, m)| cand.1 > m) {
                    max = Some(cand);
                }
                next += 1;
            }
            if let Some((j, m)) = max {
                if m >= v {
                    push(
                        &mut out,
                        Check::Order,
                        format!(
                            "a write got a version not above one acknowledged before it started: {} came after {}",
                            describe(&ops[i]),
                            describe(&ops[j])
                        ),
                    );
                }
            }
        }
    }

    // (b) and (c) on the final state.
    let Some(final_state) = input.final_state else {
        return out;
    };
    let keys: BTreeSet<&str> = by_key
        .keys()
        .copied()
        .chain(final_state.keys().map(String::as_str))
        .collect();
    for key in keys {
        let writes: Vec<usize> = on(key)
            .into_iter()
            .filter(|&i| ops[i].kind.is_write())
            .collect();
        let state = final_state.get(key).cloned().unwrap_or(Final::Absent);
        let j = judge(ops, &eff, &writes, &state, &by_value, key);
        if j.ok {
            let exposed: Vec<(usize, usize)> = writes
                .iter()
                .filter_map(|i| exposed_by.get(i).map(|w| (*i, *w)))
                .collect();
            if !exposed.is_empty()
                && !judge(ops, &eff_before_wipes, &writes, &state, &by_value, key).ok
            {
                out.forgiven.push((key.to_owned(), exposed));
            }
            continue;
        }
        let check = if j.a_is_delete && state != Final::Absent {
            Check::Resurrection
        } else {
            Check::LostWrite
        };
        let (a, shown, from, followers) = (j.a, j.shown, j.from, j.may_follow);
        let mut text = format!("key {key}: final state {shown}; ");
        match a {
            Some(ai) => text.push_str(&format!(
                "the greatest-version acknowledged write is {}",
                describe(&ops[ai])
            )),
            None => text.push_str("no write to it was acknowledged"),
        }
        if let Some(w) = from {
            text.push_str(&format!("; the final value's write: {}", describe(&ops[w])));
        }
        text.push_str(&format!(
            "; {} write(s) with a lost answer may follow it",
            followers.len()
        ));
        for &i in followers.iter().take(3) {
            text.push_str(&format!("; e.g. {}", describe(&ops[i])));
        }
        push(&mut out, check, text);
    }
    out
}

/// The verdict of (b) and (c) on one key.
struct Judgement {
    ok: bool,
    /// The acknowledged write with the greatest version.
    a: Option<usize>,
    a_is_delete: bool,
    /// The writes that may follow `a`.
    may_follow: Vec<usize>,
    /// The final state, for a message.
    shown: String,
    /// The write of the final value.
    from: Option<usize>,
}

fn judge(
    ops: &[Op],
    eff: &[Eff],
    writes: &[usize],
    state: &Final,
    by_value: &HashMap<&str, usize>,
    key: &str,
) -> Judgement {
    let a: Option<(usize, &Version)> = writes
        .iter()
        .filter_map(|&i| match &eff[i] {
            Eff::Yes(v) => Some((i, v)),
            _ => None,
        })
        .max_by(|x, y| x.1.cmp(y.1));
    let may_follow: Vec<usize> = writes
        .iter()
        .copied()
        .filter(|&i| match &eff[i] {
            Eff::No | Eff::Yes(_) => false,
            Eff::Maybe {
                version: Some(v), ..
            } => a.is_none_or(|(_, va)| v > va),
            Eff::Maybe {
                version: None,
                latest,
            } => a.is_none_or(|(ai, _)| latest.is_none_or(|l| l >= ops[ai].start)),
        })
        .collect();
    let allowed = |i: usize| a.is_some_and(|(ai, _)| ai == i) || may_follow.contains(&i);
    let a_is_delete = a.is_some_and(|(ai, _)| ops[ai].kind == Kind::Delete);
    let (ok, shown, from) = match state {
        Final::Absent => {
            let ok = a.is_none()
                || a_is_delete
                || writes
                    .iter()
                    .any(|&i| ops[i].kind == Kind::Delete && allowed(i));
            (ok, "absent".to_owned(), None)
        }
        Final::Present { value, version } => {
            let shown = format!("{value} (version {})", show_version(version.as_ref()));
            match by_value.get(value.as_str()) {
                Some(&w) if ops[w].key == key => {
                    let version_ok = match &ops[w].outcome {
                        Outcome::Written {
                            version: Some(vw), ..
                        } => version.as_ref() == Some(vw),
                        _ => true,
                    };
                    (allowed(w) && version_ok, shown, Some(w))
                }
                _ => (false, format!("{shown}, which no client wrote to it"), None),
            }
        }
    };
    Judgement {
        ok,
        a: a.map(|(i, _)| i),
        a_is_delete,
        may_follow,
        shown,
        from,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::chaos::history::Cond;

    fn v(ts: u64, node: &str) -> Version {
        Version {
            ts,
            node: node.to_owned(),
        }
    }

    fn put(value: &str, start: Micros, end: Micros, outcome: Outcome) -> Op {
        Op {
            client: 0,
            node: 0,
            key: "k0".to_owned(),
            kind: Kind::Put {
                value: value.to_owned(),
                cond: Cond::None,
            },
            start,
            end,
            outcome,
        }
    }

    fn del(start: Micros, end: Micros, outcome: Outcome) -> Op {
        Op {
            kind: Kind::Delete,
            ..put("", start, end, outcome)
        }
    }

    fn get(value: &str, version: Version, start: Micros, end: Micros) -> Op {
        Op {
            kind: Kind::Get { master: false },
            ..put(
                "",
                start,
                end,
                Outcome::Read {
                    value: value.to_owned(),
                    version: Some(version),
                },
            )
        }
    }

    fn written(ts: u64) -> Outcome {
        Outcome::Written {
            status: 200,
            version: Some(v(ts, "n1")),
        }
    }

    fn unknown(bounded: bool) -> Outcome {
        Outcome::Unknown {
            status: 0,
            why: "reset".into(),
            bounded,
        }
    }

    fn present(value: &str, ts: u64) -> Final {
        Final::Present {
            value: value.to_owned(),
            version: Some(v(ts, "n1")),
        }
    }

    fn run(ops: &[Op], wipes: &[Wipe], fin: Final) -> Vec<Check> {
        let nodes = vec!["n1".to_owned(), "n2".to_owned(), "n3".to_owned()];
        let fin: BTreeMap<String, Final> = [("k0".to_owned(), fin)].into();
        let out = check(&Input {
            ops,
            nodes: &nodes,
            wipes,
            final_state: Some(&fin),
            t0: 0,
        });
        out.violations.iter().map(|v| v.check).collect()
    }

    #[test]
    fn the_last_acknowledged_write_must_survive() {
        let ops = [put("a", 0, 10, written(1)), put("b", 20, 30, written(2))];
        assert!(run(&ops, &[], present("b", 2)).is_empty());
        assert_eq!(run(&ops, &[], present("a", 1)), [Check::LostWrite]);
        assert_eq!(run(&ops, &[], Final::Absent), [Check::LostWrite]);
        // The right value with another version.
        assert_eq!(run(&ops, &[], present("b", 3)), [Check::LostWrite]);
    }

    #[test]
    fn a_write_with_a_lost_answer_may_win_if_it_could_follow() {
        // Started after the last acknowledged write: may have applied after.
        let ops = [put("a", 0, 10, written(1)), put("u", 20, 30, unknown(true))];
        assert!(run(&ops, &[], present("u", 5)).is_empty());
        // Failed long before the acknowledged write started: it cannot
        // have been applied after it.
        let ops = [
            put("u", 0, 10, unknown(true)),
            put("a", 10 + LATE_APPLY + 1, 10 + LATE_APPLY + 5, written(9)),
        ];
        assert_eq!(run(&ops, &[], present("u", 5)), [Check::LostWrite]);
        // ...unless it timed out: then it may have been held anywhere.
        let ops = [
            put("u", 0, 10, unknown(false)),
            put("a", 10 + LATE_APPLY + 1, 10 + LATE_APPLY + 5, written(9)),
        ];
        assert!(run(&ops, &[], present("u", 5)).is_empty());
        // A refused write never counts.
        let ops = [
            put("a", 0, 10, written(1)),
            put(
                "r",
                20,
                30,
                Outcome::Refused {
                    status: 412,
                    why: String::new(),
                },
            ),
        ];
        assert_eq!(run(&ops, &[], present("r", 5)), [Check::LostWrite]);
    }

    #[test]
    fn a_deleted_key_must_stay_deleted() {
        let deleted = Outcome::Written {
            status: 204,
            version: Some(v(2, "n1")),
        };
        let ops = [put("a", 0, 10, written(1)), del(20, 30, deleted.clone())];
        assert!(run(&ops, &[], Final::Absent).is_empty());
        assert_eq!(run(&ops, &[], present("a", 1)), [Check::Resurrection]);
        // A write with a lost answer sent after the delete may bring it back.
        let mut ops = ops.to_vec();
        ops.push(put("u", 40, 50, unknown(true)));
        assert!(run(&ops, &[], present("u", 3)).is_empty());
        // A lost-answer delete may explain an absent key.
        let ops = [put("a", 0, 10, written(1)), del(20, 30, unknown(true))];
        assert!(run(&ops, &[], Final::Absent).is_empty());
    }

    #[test]
    fn a_wipe_excuses_only_what_no_other_node_held() {
        let ops = [put("a", 0, 10, written(1)), put("b", 20, 30, written(2))];
        let wipe = |held: Option<(Version, bool)>| Wipe {
            node: 0,
            kill: 40,
            held: held.into_iter().map(|h| ("k0".to_owned(), h)).collect(),
            unreadable: false,
        };
        // Only the wiped master had "b": losing it is the wipe's doing.
        assert!(run(&ops, &[wipe(Some((v(1, "n1"), true)))], present("a", 1)).is_empty());
        let nodes = vec!["n1".to_owned()];
        let fin: BTreeMap<String, Final> = [("k0".to_owned(), present("a", 1))].into();
        let out = check(&Input {
            ops: &ops,
            nodes: &nodes,
            wipes: &[wipe(Some((v(1, "n1"), true)))],
            final_state: Some(&fin),
            t0: 0,
        });
        assert_eq!(out.forgiven, [("k0".to_owned(), vec![(1, 0)])]);
        // Another node had it: it must survive.
        assert_eq!(
            run(&ops, &[wipe(Some((v(2, "n1"), true)))], present("a", 1)),
            [Check::LostWrite]
        );
        // A wipe of another node excuses nothing: the master keeps it.
        let other = Wipe {
            node: 1,
            ..wipe(None)
        };
        assert_eq!(
            run(&ops, std::slice::from_ref(&other), present("a", 1)),
            [Check::LostWrite]
        );
        // ...unless the master was wiped in between: then the copy on the
        // node wiped later may have been the last one.
        let first = Wipe {
            node: 0,
            kill: 35,
            ..wipe(Some((v(2, "n1"), true)))
        };
        assert!(run(&ops, &[first, other], present("a", 1)).is_empty());
    }

    #[test]
    fn a_wipe_excuses_a_delete_only_if_an_older_value_survived() {
        let deleted = Outcome::Written {
            status: 204,
            version: Some(v(2, "n1")),
        };
        let ops = [put("a", 0, 10, written(1)), del(20, 30, deleted)];
        let wipe = |held: Option<(Version, bool)>| Wipe {
            node: 0,
            kill: 40,
            held: held.into_iter().map(|h| ("k0".to_owned(), h)).collect(),
            unreadable: false,
        };
        // Another node still had the old value: it may come back.
        assert!(run(&ops, &[wipe(Some((v(1, "n1"), true)))], present("a", 1)).is_empty());
        // The others had the tombstone, an older one, or nothing: it must not.
        for held in [Some((v(2, "n1"), false)), Some((v(1, "n1"), false)), None] {
            assert_eq!(
                run(&ops, &[wipe(held)], present("a", 1)),
                [Check::Resurrection]
            );
        }
    }

    #[test]
    fn a_key_nobody_wrote_must_not_appear() {
        let nodes = vec!["n1".to_owned()];
        let ops = [put("a", 0, 10, written(1))];
        let fin: BTreeMap<String, Final> = [
            ("k0".to_owned(), present("a", 1)),
            ("zz".to_owned(), present("a", 1)),
        ]
        .into();
        let out = check(&Input {
            ops: &ops,
            nodes: &nodes,
            wipes: &[],
            final_state: Some(&fin),
            t0: 0,
        });
        let found: Vec<Check> = out.violations.iter().map(|v| v.check).collect();
        assert_eq!(found, [Check::LostWrite]);
        assert!(out.violations[0].text.contains("key zz"));
    }

    #[test]
    fn reads_must_return_written_values() {
        let ops = [
            put("a", 0, 10, written(1)),
            get("a", v(1, "n1"), 20, 30),
            get("zz", v(1, "n1"), 20, 30),
            get("a", v(7, "n1"), 20, 30),
        ];
        let found = run(&ops, &[], present("a", 1));
        assert_eq!(found, [Check::BadRead, Check::BadRead]);
        // Reading a value before its write was sent.
        let ops = [get("a", v(1, "n1"), 0, 5), put("a", 10, 20, written(1))];
        assert_eq!(run(&ops, &[], present("a", 1)), [Check::BadRead]);
    }

    #[test]
    fn versions_follow_real_time() {
        let ops = [put("a", 0, 10, written(5)), put("b", 20, 30, written(3))];
        assert!(run(&ops, &[], present("a", 5)).contains(&Check::Order));
        // Overlapping writes may be ordered either way.
        let ops = [put("a", 0, 25, written(5)), put("b", 20, 30, written(3))];
        assert!(run(&ops, &[], present("a", 5)).is_empty());
    }
}
