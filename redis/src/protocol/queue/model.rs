//! The queue's scripts on a real server, against a reference model: random joins, leaves,
//! releases and outsiders' tries, and after each one the server's answer and the lock's holder
//! must be the model's. Every waiter stays alive (a liveness of an hour): this checks order,
//! hand-off and no barging; liveness and faults are `redis/tests/waiting.rs`'s.
#[path = "../../../tests/support/server.rs"]
mod server;

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

const WAITERS: usize = 4;

#[derive(Clone, Copy, Debug)]
enum Op {
    /// Waiter i takes a step (joins, confirms, or takes the free lock).
    Step(usize),
    /// Waiter i's last step (leaves, unless it gets the lock).
    Leave(usize),
    /// The holder releases (if it knows it holds).
    Release,
    /// The lock key expires: a holder that crashed, or a hand-off its waiter never confirmed
    /// (the key is deleted, as its expiry would).
    Expire,
    /// Someone who does not queue tries once.
    Try,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..WAITERS).prop_map(Op::Step),
        1 => (0..WAITERS).prop_map(Op::Leave),
        3 => Just(Op::Release),
        1 => Just(Op::Try),
        1 => Just(Op::Expire),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Holder {
    Waiter(usize),
    Outsider(usize),
}

/// The reference: who holds the lock (confirmed or merely handed to), and who queues, in order
/// of their tickets — each waiter's first join, kept until its wait ends (a waiter whose hand-off
/// expired comes back to its place).
#[derive(Default)]
struct Model {
    holder: Option<Holder>,
    /// The holder knows it holds (a hand-off is not known until the waiter's next step).
    confirmed: bool,
    queue: BTreeMap<u64, usize>,
    tickets: [Option<u64>; WAITERS],
    next_ticket: u64,
}

impl Model {
    /// The lock is free: the first waiter gets it (handed off), or nobody.
    fn hand_off(&mut self) {
        self.holder = self.queue.pop_first().map(|(_, w)| Holder::Waiter(w));
        self.confirmed = false;
    }

    fn dequeue(&mut self, i: usize) {
        self.queue.retain(|_, &mut w| w != i);
    }

    /// Waiter i's wait ends: its next one starts without a place.
    fn ends(&mut self, i: usize) {
        self.dequeue(i);
        self.tickets[i] = None;
    }

    /// What waiter i's step answers: granted, or (rank) queued, or left.
    fn step(&mut self, i: usize, leave: bool) -> Result<(), Option<u64>> {
        if self.holder == Some(Holder::Waiter(i)) {
            self.ends(i);
            self.confirmed = true;
            return Ok(());
        }
        if self.holder.is_none() {
            let first = self.queue.first_key_value().map(|(_, &w)| w);
            if first.is_none_or(|w| w == i) {
                self.ends(i);
                self.holder = Some(Holder::Waiter(i));
                self.confirmed = true;
                return Ok(());
            }
            self.hand_off();
        }
        if leave {
            self.ends(i);
            return Err(None);
        }
        let ticket = *self.tickets[i].get_or_insert_with(|| {
            self.next_ticket += 1;
            self.next_ticket
        });
        self.queue.insert(ticket, i);
        let rank = self.queue.keys().position(|&t| t == ticket).unwrap();
        Err(Some(rank as u64))
    }
}

fn run(con: &mut redis::Connection, request: &Request) -> Value {
    match request.evalsha().query::<Value>(con) {
        Err(e) if protocol::is_noscript(&e) => request.eval().query(con).unwrap(),
        reply => reply.unwrap(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn the_queue_scripts_follow_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let redis = server::RedisProcess::start();
        let client = redis::Client::open(redis.url()).unwrap();
        let mut con = client.get_connection().unwrap();
        let keys = LockKeys::new("m:", "hot").unwrap();
        let liveness = Liveness::new(MAX_LIVENESS).unwrap();
        let nonces: Vec<Nonce> = (0..WAITERS).map(|_| Nonce::new()).collect();
        let waiter = |i: usize| format!("{}{}", nonces[i].prefix(), liveness.grace_ms());
        let mut tickets = vec![String::new(); WAITERS];
        let mut outsiders: Vec<Nonce> = Vec::new();
        let mut model = Model::default();
        for op in ops {
            match op {
                Op::Step(i) | Op::Leave(i) => {
                    let leave = matches!(op, Op::Leave(_));
                    let request = protocol::wait(
                        &keys, &nonces[i], &waiter(i), 60_000, liveness.alive_ms(),
                        &tickets[i], leave,
                    );
                    let reply = decode_wait(&run(&mut con, &request)).unwrap();
                    match (model.step(i, leave), reply) {
                        // A wait that ended: the next one starts without a place.
                        (Ok(()), WaitReply::Granted(_)) | (Err(None), WaitReply::Left) => {
                            tickets[i].clear();
                        }
                        (Err(Some(rank)), WaitReply::Queued { ticket, rank: got, .. }) => {
                            prop_assert_eq!(rank, got, "{:?}", op);
                            tickets[i] = ticket;
                        }
                        (want, got) => prop_assert!(false, "{op:?}: model {want:?}, server {got:?}"),
                    }
                }
                Op::Release => {
                    // Only a holder that knows it holds releases.
                    let nonce = match model.holder {
                        Some(Holder::Waiter(i)) if model.confirmed => &nonces[i],
                        Some(Holder::Outsider(n)) => &outsiders[n],
                        _ => continue,
                    };
                    let reply = run(&mut con, &protocol::release(&keys, nonce, 1));
                    prop_assert_eq!(protocol::decode_holder(&reply).unwrap(), protocol::Holder::Us);
                    model.hand_off();
                }
                Op::Expire => {
                    let () = redis::cmd("DEL").arg(&keys.lock).query(&mut con).unwrap();
                    model.holder = None;
                    model.confirmed = false;
                }
                Op::Try => {
                    let nonce = Nonce::new();
                    let reply = run(&mut con, &protocol::acquire([&keys], &nonce, 60_000));
                    let got = protocol::decode_acquire(&reply, 1).unwrap().is_some();
                    let want = if model.holder.is_some() {
                        false
                    } else if model.queue.is_empty() {
                        model.holder = Some(Holder::Outsider(outsiders.len()));
                        model.confirmed = true;
                        true
                    } else {
                        model.hand_off();
                        false
                    };
                    prop_assert_eq!(got, want, "try");
                    outsiders.push(nonce);
                }
            }
            // The lock key names the model's holder.
            let value: Option<String> =
                redis::cmd("GET").arg(&keys.lock).query(&mut con).unwrap();
            let nonce = match model.holder {
                Some(Holder::Waiter(i)) => Some(nonces[i].prefix()),
                Some(Holder::Outsider(n)) => Some(outsiders[n].prefix()),
                None => None,
            };
            prop_assert_eq!(value.as_deref().map(|v| &v[..33]), nonce, "holder after {:?}", op);
            let queued: Vec<String> =
                redis::cmd("ZRANGE").arg(&keys.queue).arg(0).arg(-1).query(&mut con).unwrap();
            let want: Vec<String> = model.queue.values().map(|&i| waiter(i)).collect();
            prop_assert_eq!(queued, want, "queue after {:?}", op);
        }
    }
}
