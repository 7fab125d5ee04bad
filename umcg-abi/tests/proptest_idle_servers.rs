//! proptest-state-machine: a plain model of the idle-server list (node order and marks)
//! against the real `IdleServerList`, over random sequences of push / pop / GC / remove /
//! reclaim / pop_all / is_empty on up to 16 nodes.
//!
//! After every step the real list is walked from its head and must equal the model: the same
//! nodes in the same order with the same marks, and every node's link word in the state the
//! model says (reset, live, deleted). 256 cases by default; CI sets `PROPTEST_CASES=10000`.
#![cfg(not(umcg_loom))]

use proptest::prelude::*;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};
use umcg_abi::UmcgTask;
use umcg_abi::idle_servers::{
    DELETED, Gc, GcStats, IdleServerList, Node, Pop, Push, PushError, Reclaim, Remove,
};

const MAX_NODES: usize = 16;

/// Where a node is, in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Where {
    /// Off the list, link = head address: may be pushed.
    Reset,
    /// On the list (position in `Model::list`), marked or not.
    Listed,
    /// Deleted and detached (collected, or left by `pop_all` to its popper): reclaim resets
    /// it.
    Detached,
}

#[derive(Clone, Debug)]
struct Model {
    nodes: usize,
    /// List order from the head: (node, marked).
    list: Vec<(usize, bool)>,
    place: Vec<Where>,
    /// The outcome the model predicts for the last transition.
    last: Outcome,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    None,
    Push(Result<Push, ()>),
    Pop(Option<usize>, /* bound exceeded */ bool),
    Gc(usize),
    Remove(Remove),
    Reclaim(Reclaim),
    PopAll(Vec<usize>),
    IsEmpty(bool),
}

#[derive(Clone, Debug)]
enum Op {
    Push(usize),
    Pop(usize),
    Gc,
    Remove(usize),
    Reclaim(usize),
    PopAll,
    IsEmpty,
}

impl Model {
    /// Unlink every marked node: it stays deleted, detached, until reclaimed.
    fn gc(&mut self) -> usize {
        let mut unlinked = 0;
        for &(i, marked) in &self.list {
            if marked {
                self.place[i] = Where::Detached;
                unlinked += 1;
            }
        }
        self.list.retain(|&(_, marked)| !marked);
        unlinked
    }
    fn is_marked(&self, i: usize) -> Option<bool> {
        self.list.iter().find(|(n, _)| *n == i).map(|&(_, m)| m)
    }
}

struct ModelMachine;

impl ReferenceStateMachine for ModelMachine {
    type State = Model;
    type Transition = Op;

    fn init_state() -> BoxedStrategy<Model> {
        (1..=MAX_NODES)
            .prop_map(|nodes| Model {
                nodes,
                list: Vec::new(),
                place: vec![Where::Reset; nodes],
                last: Outcome::None,
            })
            .boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Op> {
        let n = state.nodes;
        prop_oneof![
            4 => (0..n).prop_map(Op::Push),
            3 => (1..=2 * MAX_NODES).prop_map(Op::Pop),
            1 => Just(Op::Gc),
            1 => (0..n).prop_map(Op::Remove),
            2 => (0..n).prop_map(Op::Reclaim),
            1 => Just(Op::PopAll),
            1 => Just(Op::IsEmpty),
        ]
        .boxed()
    }

    fn apply(mut s: Model, op: &Op) -> Model {
        s.last = match *op {
            Op::Push(i) => {
                if s.place[i] == Where::Reset {
                    s.list.insert(0, (i, false));
                    s.place[i] = Where::Listed;
                    Outcome::Push(Ok(Push::Pushed))
                } else {
                    Outcome::Push(Err(()))
                }
            }
            Op::Pop(bound) => {
                // The kernel's loop: one iteration per node visited, and one for the end.
                // Iteration k (0-based) happens only if k < bound.
                let mut found = None;
                let mut exceeded = false;
                for k in 0..=s.list.len() {
                    if k == bound {
                        exceeded = true;
                        break;
                    }
                    if k == s.list.len() {
                        break;
                    }
                    if !s.list[k].1 {
                        s.list[k].1 = true;
                        found = Some(s.list[k].0);
                        break;
                    }
                }
                Outcome::Pop(found, exceeded)
            }
            Op::Gc => Outcome::Gc(s.gc()),
            Op::Remove(i) => Outcome::Remove(match s.place[i] {
                Where::Reset => Remove::NotOnList,
                Where::Detached => Remove::AlreadyDeleted,
                Where::Listed => {
                    let pos = s.list.iter().position(|(n, _)| *n == i).unwrap();
                    if s.list[pos].1 {
                        Remove::AlreadyDeleted
                    } else {
                        s.list[pos].1 = true;
                        Remove::Removed
                    }
                }
            }),
            Op::Reclaim(i) => Outcome::Reclaim(match s.place[i] {
                Where::Reset => Reclaim::AlreadyReset,
                Where::Listed if s.is_marked(i) == Some(false) => Reclaim::Live,
                Where::Listed | Where::Detached => {
                    s.gc();
                    s.place[i] = Where::Reset;
                    Reclaim::Reset
                }
            }),
            Op::PopAll => {
                let mut claimed = Vec::new();
                for &(i, marked) in &s.list {
                    if marked {
                        s.place[i] = Where::Detached;
                    } else {
                        s.place[i] = Where::Reset;
                        claimed.push(i);
                    }
                }
                s.list.clear();
                Outcome::PopAll(claimed)
            }
            Op::IsEmpty => Outcome::IsEmpty(s.list.iter().all(|&(_, m)| m)),
        };
        s
    }
}

struct Real {
    list: Box<IdleServerList>,
    /// Boxed: each task must keep its address (nodes are field addresses).
    #[allow(clippy::vec_box)]
    servers: Vec<Box<UmcgTask>>,
}

impl Real {
    fn index(&self, node: Node) -> usize {
        self.servers
            .iter()
            .position(|t| Node::of(t) == node)
            .expect("a node that is not one of ours")
    }

    /// Walk the real list: (node, marked) from the head.
    fn walk(&self) -> Vec<(usize, bool)> {
        let mut out = Vec::new();
        let mut cur = self.list.head_word();
        assert_eq!(cur & DELETED, 0, "tagged head word");
        while cur != 0 {
            let i = self
                .servers
                .iter()
                .position(|t| Node::of(t).addr() == cur)
                .expect("a link to a foreign address");
            let link = self.servers[i]
                .idle_servers_ptr
                .load(std::sync::atomic::Ordering::Acquire);
            out.push((i, link & DELETED != 0));
            assert!(out.len() <= self.servers.len(), "cycle in the real list");
            cur = link & !DELETED;
        }
        out
    }
}

impl StateMachineTest for Real {
    type SystemUnderTest = Real;
    type Reference = ModelMachine;

    fn init_test(model: &Model) -> Real {
        let real = Real {
            list: Box::new(IdleServerList::new()),
            servers: (0..model.nodes)
                .map(|_| Box::new(UmcgTask::new_server()))
                .collect(),
        };
        for t in &real.servers {
            real.list.prepare(t);
        }
        real
    }

    fn apply(real: Real, model: &Model, op: Op) -> Real {
        let got = match op {
            Op::Push(i) => {
                // SAFETY: the boxed servers outlive the list (both live in `Real`).
                let r = unsafe { real.list.push(&real.servers[i]) };
                if let Err(e) = r {
                    assert!(matches!(e, PushError::NotReset(_)), "{e:?}");
                }
                Outcome::Push(r.map_err(|_| ()))
            }
            Op::Pop(bound) => match real.list.pop(bound) {
                Pop::Got(n) => Outcome::Pop(Some(real.index(n)), false),
                Pop::Empty => Outcome::Pop(None, false),
                Pop::BoundExceeded => Outcome::Pop(None, true),
                Pop::Corrupt(c) => panic!("corruption on a well-formed list: {c:?}"),
            },
            Op::Gc => match real.list.gc() {
                Gc::Done(GcStats { unlinked, restarts }) => {
                    assert_eq!(restarts, 0, "sequential GC never restarts");
                    Outcome::Gc(unlinked)
                }
                other => panic!("gc: {other:?}"),
            },
            Op::Remove(i) => Outcome::Remove(real.list.remove(&real.servers[i])),
            Op::Reclaim(i) => Outcome::Reclaim(
                real.list
                    .reclaim(&real.servers[i])
                    .expect("reclaim on a well-formed list"),
            ),
            Op::PopAll => {
                let mut v = Vec::new();
                real.list
                    .pop_all(|t| v.push(real.index(Node::of(t))))
                    .expect("pop_all");
                Outcome::PopAll(v)
            }
            Op::IsEmpty => Outcome::IsEmpty(real.list.is_empty().expect("is_empty")),
        };
        assert_eq!(got, model.last, "outcome of {op:?}");
        real
    }

    fn check_invariants(real: &Real, model: &Model) {
        assert_eq!(real.walk(), model.list, "list contents");
        let head = real.list.head_addr();
        for (i, t) in real.servers.iter().enumerate() {
            let link = t
                .idle_servers_ptr
                .load(std::sync::atomic::Ordering::Acquire);
            match model.place[i] {
                Where::Reset => assert_eq!(link, head, "node {i} should be reset"),
                Where::Detached => assert_ne!(link & DELETED, 0, "node {i} should be deleted"),
                Where::Listed => assert_ne!(link, head, "node {i} should be linked"),
            }
        }
    }
}

prop_state_machine! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct(
                "proptest-regressions/proptest_idle_servers.txt",
            ),
        )),
        ..ProptestConfig::default()
    })]
    #[test]
    fn idle_server_list_matches_model(sequential 1..64 => Real);
}
