//! `DeadlineLock<T, C>`: a lock whose holder gets a *lease* that ends by itself, and a fencing
//! token that says which lease it was.
//!
//! The seed's "Lock Timeout": a lock that times out frees everyone from a crashed holder, but a
//! holder that merely stalled may wake up after its lease ended. Here every acquisition — a
//! takeover of an ended lease included — takes the next *generation* of the lock, and the
//! generation is the lease's [`FencingToken`]: a [`Fenced`](crate::Fenced) resource refuses the
//! stalled holder's late writes, and the lock itself refuses its late accesses, renewals and
//! releases.
//!
//! # Protocol
//!
//! Two words: `state` (generation and three flag bits) and `deadline` (when the lease of that
//! generation ends, in nanoseconds of the lock's clock). The deadline is only written, and only
//! read authoritatively, by whoever holds the `LOCKED` bit of `state` — and the generation lives in
//! that same word. So a takeover (set `LOCKED`, see the deadline passed, write the new deadline,
//! store the next generation) and a renewal (set `LOCKED` *if the generation is still ours*, write
//! the deadline, clear `LOCKED`) exclude each other, and a stale holder can never write the
//! deadline of a newer lease: the classic bug when generation and deadline live in different words
//! and are checked one after the other. Releasing is one compare-and-swap of `state` against the
//! releaser's own generation, so it cannot end anyone else's lease either.
//!
//! Accesses to the data take a third, separate byte (`access`) for the duration of the closure and
//! check the lease *after* taking it: a lease that ends mid-access cannot make the next holder's
//! access overlap it, because the next holder waits for the byte. An access that finds the byte
//! busy looks at its lease while it waits (generation and clock) and gives up as soon as the lease
//! is lost: a lost lease waits for nobody, so accesses nested across locks (A inside L0 opens L1, B
//! inside L1 opens L0) cannot wait on each other for longer than a lease.

use core::fmt;
use core::mem::ManuallyDrop;
use core::time::Duration;

use crate::clock::{nanos, Clock, MonotonicClock};
use crate::fencing::FencingToken;
use crate::primitive::{self, const_fn_unless_loom, AtomicU64, AtomicU8, Ordering::*, UnsafeCell};
use crate::relax::Backoff;

/// Set while one thread reads or writes `deadline`; every other write to `state` waits for it to
/// clear (it is held for a few instructions, never across a wait).
const LOCKED: u64 = 1;
/// A lease has been issued for the generation in `state` and not released (it may have run out).
const HELD: u64 = 1 << 1;
/// Some thread may be parked waiting for this lease: its release must wake them.
const PARKED: u64 = 1 << 2;
/// `state >> GENERATION_SHIFT` is the generation: the token of the latest lease (0: none yet).
const GENERATION_SHIFT: u32 = 3;
/// The last generation `state` can hold: a lock that has issued it issues no more tokens.
const MAX_GENERATION: u64 = u64::MAX >> GENERATION_SHIFT;

/// Nobody is accessing the data.
const IDLE: u8 = 0;
/// A lease's closure is running on the data.
const ACCESSING: u8 = 1;

/// Looks at the lock before parking (each followed by the relax hook, whose `Backoff` spins
/// 1, 2, 4, … hints). Under loom, none: the looks are `try_acquire`'s code, modelled on its own,
/// and every extra look multiplies the interleavings.
#[cfg(not(loom))]
const LOOKS_BEFORE_PARKING: u32 = 6;
#[cfg(loom)]
const LOOKS_BEFORE_PARKING: u32 = 0;

/// A lock whose holder gets a time-limited [`Lease`] instead of a guard.
///
/// - [`try_acquire`](Self::try_acquire) succeeds when the lock is free *or the current lease has
///   ended* (a takeover); [`acquire`](Self::acquire) and [`acquire_timeout`](Self::acquire_timeout)
///   wait for one of those.
/// - Every acquisition, takeover included, takes the next generation: the lease's
///   [`FencingToken`], strictly increasing per lock, from 1.
/// - The data is reached only through the lease ([`Lease::with`], [`Lease::with_mut`]), which
///   refuses to start an access once the lease has ended or been taken over; two accesses never
///   overlap, even when a lease ends in the middle of one (the next holder's access waits). An
///   access that waits for another to end gives up with [`LeaseLost`] as soon as its own lease
///   ends or is taken over, without waiting any longer.
/// - A stale lease's [`renew`](Lease::renew) and [`release`](Lease::release) fail with
///   [`LeaseLost`] and change nothing: they can never extend or end a newer lease.
///
/// Time comes from the clock `C`: [`MonotonicClock`] by default, [`ManualClock`](crate::ManualClock)
/// in tests. Durations are whole nanoseconds; a lease of zero ends at once, and a huge lease
/// saturates at the clock's end of time (never wraps into the past). `size_of::<DeadlineLock<()>>()`
/// is 24 bytes.
///
/// Needs the `std` feature (waiting parks through `parking_lot_core`).
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use fencelock::{DeadlineLock, Fenced};
///
/// let book = DeadlineLock::new(vec![101, 102, 103]);
/// let ledger = Fenced::new(Vec::new());
///
/// let mut lease = book.acquire(Duration::from_secs(5));
/// let unit = lease.with_mut(|units| units.pop()).unwrap();
/// ledger.write(lease.token(), |sold| sold.extend(unit)).unwrap();
/// lease.release().unwrap();
///
/// assert_eq!(ledger.read(|sold| sold.clone()), [103]);
/// ```
pub struct DeadlineLock<T: ?Sized, C = MonotonicClock> {
    /// | bits            | meaning                                                         |
    /// |-----------------|-----------------------------------------------------------------|
    /// | `63..3`         | generation: the token of the latest lease issued (0: none yet)  |
    /// | `PARKED` (bit 2)| a waiter may be parked: the release must wake it                |
    /// | `HELD` (bit 1)  | that lease was not released (it may have run out)               |
    /// | `LOCKED` (bit 0)| one thread is reading or writing `deadline`: nobody else writes |
    ///
    /// | state               | what may happen                                             |
    /// |---------------------|-------------------------------------------------------------|
    /// | `g`                 | free: CAS to `g+1 | HELD | LOCKED` issues lease `g+1`       |
    /// | `g | HELD`          | leased: its holder may renew or release; anyone may look    |
    /// | `g | HELD | LOCKED` | someone is looking (a taker) or renewing: others wait       |
    state: AtomicU64,
    /// When the lease of the generation in `state` ends, in nanoseconds of `clock`. Written only
    /// by the thread holding `LOCKED`; read without it only as a hint.
    deadline: AtomicU64,
    /// `IDLE` or `ACCESSING`: held for the duration of a `with`/`with_mut` closure.
    access: AtomicU8,
    clock: C,
    data: UnsafeCell<T>,
}

// SAFETY: the data is reached only inside `with`/`with_mut`, between taking the `access` byte with
// an Acquire CAS and giving it back with a Release store, so accesses from different threads are
// exclusive and ordered; `T` moves between threads, hence `T: Send`, as for `std::sync::Mutex`.
// The clock is `Send + Sync` by `Clock`'s bounds (and shared by every caller).
unsafe impl<T: ?Sized + Send, C: Send + Sync> Sync for DeadlineLock<T, C> {}
// SAFETY: owning the lock is owning the `T` and the clock.
unsafe impl<T: ?Sized + Send, C: Send> Send for DeadlineLock<T, C> {}

impl<T> DeadlineLock<T> {
    const_fn_unless_loom! {
        /// A free lock around `value`, timed by [`MonotonicClock`].
        ///
        /// ```
        /// use std::time::Duration;
        /// use fencelock::DeadlineLock;
        ///
        /// static SETTLEMENT: DeadlineLock<u64> = DeadlineLock::new(0);
        /// SETTLEMENT.acquire(Duration::from_secs(1)).with_mut(|n| *n += 1).unwrap();
        /// ```
        #[inline]
        pub fn new(value: T) -> Self {
            Self::with_clock(value, MonotonicClock)
        }
    }
}

impl<T, C> DeadlineLock<T, C> {
    const_fn_unless_loom! {
        /// A free lock around `value`, timed by `clock`.
        ///
        /// ```
        /// use std::sync::Arc;
        /// use std::time::Duration;
        /// use fencelock::{DeadlineLock, ManualClock};
        ///
        /// let clock = Arc::new(ManualClock::new());
        /// let lock = DeadlineLock::with_clock((), Arc::clone(&clock));
        /// let lease = lock.acquire(Duration::from_secs(1));
        /// clock.advance(Duration::from_secs(1));
        /// assert!(!lease.is_valid());
        /// ```
        #[inline]
        pub fn with_clock(value: T, clock: C) -> Self {
            Self {
                state: AtomicU64::new(0),
                deadline: AtomicU64::new(0),
                access: AtomicU8::new(IDLE),
                clock,
                data: UnsafeCell::new(value),
            }
        }
    }

    /// Consumes the lock and returns the data: owning the lock proves no lease is alive.
    #[inline]
    pub fn into_inner(self) -> T {
        self.data.into_inner()
    }
}

impl<T: ?Sized, C> DeadlineLock<T, C> {
    /// The data, through `&mut self`: the borrow proves no lease is alive.
    #[inline]
    pub fn get_mut(&mut self) -> &mut T {
        // SAFETY: `&mut self` excludes every lease and every access; the reference lives no
        // longer than the borrow.
        self.data.with_mut(|data| unsafe { &mut *data })
    }

    /// The key parked waiters wait on: the state word's address, which nothing else parks on.
    #[inline]
    fn park_key(&self) -> usize {
        core::ptr::from_ref(&self.state).addr()
    }

    /// This lock's place in the global lock order of [`acquire_all`](crate::acquire_all): the
    /// state word's address, which no other live lock shares.
    #[inline]
    pub(crate) fn order_key(&self) -> usize {
        self.park_key()
    }
}

impl<T: ?Sized, C: Clock> DeadlineLock<T, C> {
    /// Takes a lease of length `lease` if the lock is free or the current lease has ended (by
    /// the lock's clock), without waiting; `None` otherwise.
    ///
    /// Also `None` when another thread is taking or looking at the lock at this very moment
    /// (whoever it is decides), and when the lock has issued its last token (after
    /// 2<sup>61</sup> − 1 acquisitions).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use fencelock::{DeadlineLock, ManualClock};
    ///
    /// let clock = Arc::new(ManualClock::new());
    /// let lock = DeadlineLock::with_clock((), Arc::clone(&clock));
    /// let stalled = lock.try_acquire(Duration::from_secs(2)).unwrap();
    /// assert!(lock.try_acquire(Duration::from_secs(2)).is_none());
    ///
    /// clock.advance(Duration::from_secs(2)); // the lease runs out: anyone may take over
    /// let next = lock.try_acquire(Duration::from_secs(2)).unwrap();
    /// assert!(next.token() > stalled.token());
    /// ```
    #[inline]
    pub fn try_acquire(&self, lease: Duration) -> Option<Lease<'_, T, C>> {
        let now = nanos(self.clock.now());
        self.try_acquire_at(now, lease)
    }

    /// Takes a lease of length `lease`, waiting for as long as it takes: until the lock is
    /// released, or until the current lease ends by the lock's clock and this thread takes over.
    ///
    /// Waiting spins briefly, then parks (through `parking_lot_core`) until the holder's deadline,
    /// woken early by a release. With a clock that does not run in real time (a
    /// [`ManualClock`](crate::ManualClock)), a parked waiter wakes at least every millisecond to
    /// read the clock again (see [`Clock::max_sleep`]), so waiting always ends once the clock
    /// passes the holder's deadline.
    ///
    /// A lock that has issued its last token (2<sup>61</sup> − 1 acquisitions: 73 years at a
    /// billion a second) never issues another; `acquire` would then wait forever, where
    /// `try_acquire` and `acquire_timeout` return `None`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use std::thread;
    /// use fencelock::DeadlineLock;
    ///
    /// let lock = DeadlineLock::new(0);
    /// thread::scope(|s| {
    ///     for _ in 0..4 {
    ///         s.spawn(|| lock.acquire(Duration::from_secs(10)).with_mut(|n| *n += 1).unwrap());
    ///     }
    /// });
    /// assert_eq!(lock.into_inner(), 4);
    /// ```
    #[inline]
    pub fn acquire(&self, lease: Duration) -> Lease<'_, T, C> {
        if let Some(acquired) = self.try_acquire(lease) {
            return acquired;
        }
        #[cfg(feature = "tracing")]
        let began = self.now();
        loop {
            if let Some(acquired) = self.wait(lease, None) {
                crate::trace::debug_event!(
                    token = acquired.token().get(),
                    waited_ns = self.now().saturating_sub(began),
                    "acquire waited"
                );
                return acquired;
            }
        }
    }

    /// As [`acquire`](Self::acquire), but gives up (`None`) once `wait` has passed on the lock's
    /// clock. A zero `wait` tries once more after a failed `try_acquire`; a huge one saturates.
    ///
    /// ```
    /// use std::time::Duration;
    /// use fencelock::DeadlineLock;
    ///
    /// let lock = DeadlineLock::new(());
    /// let _held = lock.acquire(Duration::from_secs(60));
    /// assert!(lock.acquire_timeout(Duration::from_secs(1), Duration::from_millis(1)).is_none());
    /// ```
    pub fn acquire_timeout(&self, lease: Duration, wait: Duration) -> Option<Lease<'_, T, C>> {
        if let Some(acquired) = self.try_acquire(lease) {
            return Some(acquired);
        }
        let began = nanos(self.clock.now());
        let waited = self.wait(lease, Some(began.saturating_add(nanos(wait))));
        crate::trace::debug_event!(
            token = waited.as_ref().map(Lease::token).map(FencingToken::get),
            waited_ns = self.now().saturating_sub(began),
            "acquire_timeout waited"
        );
        waited
    }

    /// The lock's clock, read, in nanoseconds: the unit of every deadline.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        nanos(self.clock.now())
    }

    /// `try_acquire` with the clock already read.
    #[inline]
    fn try_acquire_at(&self, now: u64, lease: Duration) -> Option<Lease<'_, T, C>> {
        let mut state = self.state.load(Relaxed);
        loop {
            // Someone holds LOCKED: whoever it is decides (it issues a lease, renews one, or
            // looks and leaves), so this look fails.
            if state & LOCKED != 0 {
                return None;
            }
            if state & HELD == 0 {
                let generation = next_generation(state)?;
                // Acquire pairs with the Release CAS in `release`/`release_contended`: what the
                // previous holder did before releasing happens-before this lease. LOCKED keeps
                // takers off the deadline word until `issue` has written it.
                match self.state.compare_exchange(
                    state,
                    generation << GENERATION_SHIFT | HELD | LOCKED,
                    Acquire,
                    Relaxed,
                ) {
                    Ok(_) => return Some(self.issue(generation, state & PARKED, now, lease)),
                    Err(current) => state = current,
                }
                continue;
            }
            // The deadline, read without LOCKED, is a hint: if it has not passed, fail without
            // disturbing the holder. A stale hint only makes this fail as it would have on the
            // older state it belongs to; a takeover is decided under LOCKED, on the deadline itself.
            if now < self.deadline.load(Relaxed) {
                return None;
            }
            match self.take_over(state, now, lease, false) {
                Ok(acquired) => return Some(acquired),
                Err(Refused::Contended { current }) => state = current,
                Err(Refused::Held { .. } | Refused::Exhausted { .. }) => return None,
            }
        }
    }

    /// Writes the deadline of lease `generation`, which this thread has just claimed with LOCKED,
    /// and publishes it by clearing LOCKED.
    #[inline]
    fn issue(&self, generation: u64, parked: u64, now: u64, lease: Duration) -> Lease<'_, T, C> {
        let deadline = now.saturating_add(nanos(lease));
        self.deadline.store(deadline, Relaxed);
        // Release pairs with the Acquire CAS in `take_over`: a taker that sets LOCKED after this
        // store reads this lease's deadline, never the previous lease's. A plain store is enough:
        // while LOCKED is set nobody else writes `state`.
        self.state
            .store(generation << GENERATION_SHIFT | HELD | parked, Release);
        Lease {
            lock: self,
            generation,
            deadline,
        }
    }

    /// Sets LOCKED on `state` (a held lock) and reads the deadline: if the lease has ended by
    /// `now`, takes the lock over with the next generation; otherwise leaves it as it was (with
    /// PARKED set if `parking`) and returns why not.
    #[cold]
    fn take_over(
        &self,
        state: u64,
        now: u64,
        lease: Duration,
        parking: bool,
    ) -> Result<Lease<'_, T, C>, Refused> {
        // Acquire pairs with the Release stores in `issue` and `renew` (and, through the release
        // sequence, with any RMW since): the deadline read below is the current lease's.
        if let Err(current) = self
            .state
            .compare_exchange(state, state | LOCKED, Acquire, Relaxed)
        {
            return Err(Refused::Contended { current });
        }
        let deadline = self.deadline.load(Relaxed);
        let refused = if now < deadline {
            Refused::Held { deadline }
        } else if let Some(generation) = next_generation(state) {
            return Ok(self.issue(generation, state & PARKED, now, lease));
        } else {
            Refused::Exhausted { deadline }
        };
        let unlocked = if parking { state | PARKED } else { state };
        // Relaxed: this thread wrote nothing to publish, and an RMW continues the release sequence
        // of the store that published the deadline, so later takers still synchronise with it.
        self.state.swap(unlocked, Relaxed);
        Err(refused)
    }

    /// Waits for the lock: a few looks with the relax hook between them, then parking until the
    /// holder's deadline (or `give_up`), woken early by a release. `None` once the clock reaches
    /// `give_up`.
    ///
    /// A parked waiter has read the deadline under LOCKED once; it then sleeps on that knowledge,
    /// without touching the state word, for as long as the state word *and the deadline word* are
    /// unchanged and the clock has not reached that deadline. A renewal that moves the deadline
    /// earlier wakes it. The state word alone is not enough: a renewal clears PARKED, and another
    /// waiter may set it again before this one parks, so that the state word is back to what this
    /// waiter left while the deadline it read is stale (and later than the real one).
    #[cold]
    #[cfg_attr(loom, allow(clippy::absurd_extreme_comparisons))]
    fn wait(&self, lease: Duration, give_up: Option<u64>) -> Option<Lease<'_, T, C>> {
        let mut attempt = 0_u32;
        let mut watching: Option<Watch> = None;
        loop {
            let now = nanos(self.clock.now());
            let state = self.state.load(Relaxed);
            match watching {
                Some(watch) if self.unchanged(&watch, state) && now < watch.until => {}
                _ if state & (HELD | LOCKED) != HELD || attempt < LOOKS_BEFORE_PARKING => {
                    watching = None;
                    if let Some(acquired) = self.try_acquire_at(now, lease) {
                        return Some(acquired);
                    }
                }
                _ => match self.take_over(state, now, lease, true) {
                    Ok(acquired) => return Some(acquired),
                    Err(Refused::Held { deadline }) => {
                        watching = Some(Watch {
                            state: state | PARKED,
                            deadline,
                            until: deadline,
                        });
                    }
                    Err(Refused::Exhausted { deadline }) => {
                        watching = Some(Watch {
                            state: state | PARKED,
                            deadline,
                            until: u64::MAX,
                        });
                    }
                    Err(Refused::Contended { .. }) => watching = None,
                },
            }
            if give_up.is_some_and(|give_up| now >= give_up) {
                return None;
            }
            match watching {
                // PARKED is set: sleep until the deadline, unless a release or a renewal that
                // moves the deadline earlier (which see PARKED) wakes us first.
                Some(watch) => {
                    let until = give_up.map_or(watch.until, |give_up| give_up.min(watch.until));
                    let ahead = Duration::from_nanos(until.saturating_sub(now));
                    let sleep = self.clock.max_sleep(ahead);
                    let woken = primitive::park(
                        self.park_key(),
                        || self.unchanged(&watch, self.state.load(Relaxed)),
                        sleep,
                    );
                    if woken {
                        watching = None;
                    }
                }
                None => {
                    primitive::relax::<Backoff>(attempt);
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }

    /// Whether a waiter may go on sleeping on `watch`: the state word is `state` (read by the
    /// caller) and equals the one the waiter left, and the deadline word is still the one it read.
    ///
    /// Relaxed, both: this is a hint outside `park`, and inside `park`'s validation (under the
    /// park queue's lock) it is exact without ordering. The state word can only come back to
    /// `watch.state` after PARKED was cleared by a renewal that moved the deadline earlier, and
    /// that renewal writes the deadline and then calls `unpark_all`, which takes the same queue
    /// lock: either it comes after this validation (and wakes this waiter, now queued), or it
    /// happens-before it, and this load sees the new deadline. A release also clears PARKED, but
    /// the generation never comes back.
    #[inline]
    fn unchanged(&self, watch: &Watch, state: u64) -> bool {
        state == watch.state && self.deadline.load(Relaxed) == watch.deadline
    }

    /// Renews lease `generation`, which ended at `old` and which its holder found still running
    /// at `now`; returns the new deadline.
    fn renew(
        &self,
        generation: u64,
        old: u64,
        now: u64,
        lease: Duration,
    ) -> Result<u64, LeaseLost> {
        let deadline = now.saturating_add(nanos(lease));
        let mut attempt = 0_u32;
        loop {
            let state = self.state.load(Relaxed);
            if state >> GENERATION_SHIFT != generation {
                return Err(taken_over(generation));
            }
            // Relaxed: the renewal reads nothing another thread wrote (the holder knows its own
            // deadline); what it writes is published by the Release store below.
            if state & LOCKED == 0
                && self
                    .state
                    .compare_exchange(state, state | LOCKED, Relaxed, Relaxed)
                    .is_ok()
            {
                self.deadline.store(deadline, Relaxed);
                // Parked waiters sleep until the old deadline: if it moved earlier, wake them
                // (clearing PARKED; they set it again if they park again).
                let wake = deadline < old && state & PARKED != 0;
                let unlocked = if wake { state & !PARKED } else { state };
                // Release pairs with the Acquire CAS in `take_over`: a taker that comes after
                // this renewal sees the new deadline. Nobody else writes `state` under LOCKED.
                self.state.store(unlocked, Release);
                if wake {
                    primitive::unpark_all(self.park_key());
                }
                return Ok(deadline);
            }
            primitive::relax::<Backoff>(attempt);
            attempt = attempt.saturating_add(1);
        }
    }

    /// Releases lease `generation` if it is still the lock's latest.
    #[inline]
    fn release(&self, generation: u64) -> Result<(), LeaseLost> {
        let held = generation << GENERATION_SHIFT | HELD;
        // Release pairs with the Acquire CAS in `try_acquire_at`: everything done under this lease
        // happens-before the next one. The CAS compares the whole word, generation included: it
        // cannot release a newer lease.
        match self
            .state
            .compare_exchange(held, generation << GENERATION_SHIFT, Release, Relaxed)
        {
            Ok(_) => Ok(()),
            Err(_) => self.release_contended(generation),
        }
    }

    /// `release` when the state word is not just `generation | HELD`: waiters are parked,
    /// someone holds LOCKED, or the lease was taken over.
    #[cold]
    fn release_contended(&self, generation: u64) -> Result<(), LeaseLost> {
        let mut attempt = 0_u32;
        loop {
            let state = self.state.load(Relaxed);
            if state >> GENERATION_SHIFT != generation {
                return Err(taken_over(generation));
            }
            if state & LOCKED == 0 {
                // Release, as in `release`; this clears PARKED too.
                if self
                    .state
                    .compare_exchange(state, generation << GENERATION_SHIFT, Release, Relaxed)
                    .is_ok()
                {
                    if state & PARKED != 0 {
                        primitive::unpark_all(self.park_key());
                    }
                    return Ok(());
                }
                continue;
            }
            primitive::relax::<Backoff>(attempt);
            attempt = attempt.saturating_add(1);
        }
    }

    /// Takes the access byte, then checks that lease `generation` (ending at `deadline`) still
    /// holds the lock: the check comes after taking the byte, so that an access of a newer lease
    /// can only start after this one ends. Uncontended, that is one CAS and one clock read.
    ///
    /// While the byte is busy it also looks at the lease between tries, and gives up the moment
    /// the lease has ended or been taken over: a lost lease never waits for anyone's access, so a
    /// cycle of accesses nested across locks breaks once one of its leases is lost.
    #[inline]
    fn begin_access(&self, generation: u64, deadline: u64) -> Result<Access<'_>, LeaseLost> {
        let mut attempt = 0_u32;
        // Acquire pairs with the Release store in `Access::drop`: the previous access, whoever
        // made it, happens-before this one.
        while self
            .access
            .compare_exchange(IDLE, ACCESSING, Acquire, Relaxed)
            .is_err()
        {
            self.wait_for_access(generation, deadline, &mut attempt)?;
        }
        let access = Access(&self.access);
        let now = nanos(self.clock.now());
        match self.lost(generation, deadline, now) {
            Some(lost) => Err(lost),
            None => Ok(access),
        }
    }

    /// One wait for a busy access byte: fails if lease `generation` has been lost meanwhile (by
    /// the state word's generation or by the clock), otherwise relaxes once.
    #[cold]
    fn wait_for_access(
        &self,
        generation: u64,
        deadline: u64,
        attempt: &mut u32,
    ) -> Result<(), LeaseLost> {
        // Relaxed (in `lost`): the look only decides to give up early, touching no data; a stale
        // look costs one more try, and the check after taking the byte decides the access.
        if let Some(lost) = self.lost(generation, deadline, nanos(self.clock.now())) {
            return Err(lost);
        }
        primitive::relax::<Backoff>(*attempt);
        *attempt = attempt.saturating_add(1);
        Ok(())
    }

    /// Whether lease `generation`, ending at `deadline`, still holds the lock at `now`.
    #[inline]
    fn lost(&self, generation: u64, deadline: u64, now: u64) -> Option<LeaseLost> {
        if self.state.load(Relaxed) >> GENERATION_SHIFT != generation {
            Some(taken_over(generation))
        } else if now >= deadline {
            Some(LeaseLost::Expired)
        } else {
            None
        }
    }
}

impl<T: Default> Default for DeadlineLock<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T: ?Sized, C> fmt::Debug for DeadlineLock<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.load(Relaxed);
        f.debug_struct("DeadlineLock")
            .field("generation", &(state >> GENERATION_SHIFT))
            .field("held", &(state & HELD != 0))
            .finish_non_exhaustive()
    }
}

/// Why a look under LOCKED did not take the lock over.
enum Refused {
    /// The lease runs until `deadline`.
    Held { deadline: u64 },
    /// Another thread changed the state word first (it holds LOCKED, or released, or took over):
    /// `current` is what the state word holds now.
    Contended { current: u64 },
    /// The lease that ended at `deadline` was the lock's last generation: nobody may take over.
    Exhausted { deadline: u64 },
}

/// What a parked waiter sleeps on: the state word it left (PARKED set) and the deadline word it
/// read under LOCKED; it looks again once the clock reaches `until` (that deadline, or never when
/// the lock is exhausted), or when either word changes.
#[derive(Clone, Copy)]
struct Watch {
    state: u64,
    deadline: u64,
    until: u64,
}

/// The generation after the one in `state`; `None` once the last has been issued, so that tokens
/// never wrap.
#[inline]
fn next_generation(state: u64) -> Option<u64> {
    let generation = state >> GENERATION_SHIFT;
    (generation < MAX_GENERATION).then_some(generation + 1)
}

/// Lease `generation` was taken over: generations grow by one per acquisition and a live lease is
/// never released, so the lease that took it over is the next generation.
#[inline]
fn taken_over(generation: u64) -> LeaseLost {
    LeaseLost::TakenOver {
        by: FencingToken::new(generation + 1),
    }
}

/// Holds the access byte; gives it back on drop, even if the closure panics.
struct Access<'a>(&'a AtomicU8);

impl Drop for Access<'_> {
    #[inline]
    fn drop(&mut self) {
        // Release pairs with the Acquire CAS in `begin_access`: this access happens-before the
        // next one.
        self.0.store(IDLE, Release);
    }
}

/// A time-limited right to a [`DeadlineLock`]'s data, with the [`FencingToken`] of the
/// acquisition that issued it. Dropping it releases the lock if the lease is still the lock's
/// latest.
///
/// Every method that touches the lock checks the lease first: once it has ended or been taken
/// over, [`with`](Self::with), [`with_mut`](Self::with_mut) and [`renew`](Self::renew) return
/// [`LeaseLost`] and do nothing. [`release`](Self::release) does not read the clock (it is the one
/// operation kept to a single atomic instruction): it fails only once the lease has been taken
/// over; a lease that ran out but that nobody took over is still the lock's latest, and
/// releasing it frees the lock.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use fencelock::{DeadlineLock, LeaseLost, ManualClock};
///
/// let clock = Arc::new(ManualClock::new());
/// let lock = DeadlineLock::with_clock(0_u32, Arc::clone(&clock));
/// let mut stalled = lock.acquire(Duration::from_secs(1));
/// stalled.with_mut(|n| *n += 1).unwrap();
///
/// clock.advance(Duration::from_secs(1));
/// assert_eq!(stalled.with_mut(|n| *n += 1), Err(LeaseLost::Expired));
///
/// let next = lock.try_acquire(Duration::from_secs(1)).unwrap();
/// assert_eq!(stalled.renew(Duration::from_secs(1)), Err(LeaseLost::TakenOver { by: next.token() }));
/// assert_eq!(stalled.release(), Err(LeaseLost::TakenOver { by: next.token() }));
/// assert_eq!(next.with(|n| *n), Ok(1));
/// ```
#[must_use = "if unused the lease is released at once"]
pub struct Lease<'a, T: ?Sized, C: Clock = MonotonicClock> {
    lock: &'a DeadlineLock<T, C>,
    /// The generation this lease was issued: its token.
    generation: u64,
    /// When it ends, in nanoseconds of the lock's clock. While the lease is the lock's latest,
    /// only its holder changes the lock's `deadline`, so this copy is exact.
    deadline: u64,
}

impl<T: ?Sized, C: Clock> Lease<'_, T, C> {
    /// The fencing token of this lease: larger than every earlier lease's on the same lock.
    #[inline]
    pub fn token(&self) -> FencingToken {
        FencingToken::new(self.generation)
    }

    /// Time left on the lease by the lock's clock; `None` once it has ended or been taken over.
    #[inline]
    pub fn remaining(&self) -> Option<Duration> {
        let now = nanos(self.lock.clock.now());
        match self.lock.lost(self.generation, self.deadline, now) {
            None => Some(Duration::from_nanos(self.deadline - now)),
            Some(_) => None,
        }
    }

    /// Whether the lease still runs: a snapshot.
    #[inline]
    pub fn is_valid(&self) -> bool {
        self.remaining().is_some()
    }

    /// Extends the lease to `lease` from now (which may also shorten it; zero ends it at once).
    ///
    /// Fails with [`LeaseLost`] and changes nothing if the lease has already ended or been taken
    /// over: a renewal never revives an ended lease, and never touches a newer one.
    pub fn renew(&mut self, lease: Duration) -> Result<(), LeaseLost> {
        self.renew_at(self.lock.now(), lease)
    }

    /// `renew` with the clock already read: `now` is a reading of the lock's clock.
    pub(crate) fn renew_at(&mut self, now: u64, lease: Duration) -> Result<(), LeaseLost> {
        let renewed = match self.lock.lost(self.generation, self.deadline, now) {
            Some(lost) => Err(lost),
            None => self.lock.renew(self.generation, self.deadline, now, lease),
        };
        match renewed {
            Ok(deadline) => {
                self.deadline = deadline;
                Ok(())
            }
            Err(lost) => {
                crate::trace::warn_event!(token = self.generation, %lost, "lease lost at renewal");
                Err(lost)
            }
        }
    }

    /// Runs `read` on the data, if the lease still runs when the access starts; otherwise runs
    /// nothing and returns [`LeaseLost`].
    ///
    /// The access excludes every other access to the data for as long as `read` runs — including
    /// the next holder's, should this lease end meanwhile. While another access runs, this one
    /// waits for it — unless this lease ends or is taken over meanwhile: then it returns
    /// [`LeaseLost`] at once, without waiting for the other access to end. So accesses nested
    /// across locks never wait on each other for longer than the shortest of their leases, and a
    /// lease that was taken over is refused at once, even while the new holder's access runs.
    /// Calling `with`/`with_mut` on the same lock from inside `read` waits until this lease ends
    /// (like locking a mutex twice, but bounded by the lease), then returns
    /// [`LeaseLost::Expired`].
    #[inline]
    pub fn with<R>(&self, read: impl FnOnce(&T) -> R) -> Result<R, LeaseLost> {
        let _access = self.lock.begin_access(self.generation, self.deadline)?;
        // SAFETY: `_access` holds the access byte, so no other access to the data runs until it
        // drops, after `read` returns; the reference does not outlive the closure.
        Ok(self.lock.data.with(|data| read(unsafe { &*data })))
    }

    /// Runs `write` on the data, if the lease still runs when the access starts; otherwise runs
    /// nothing and returns [`LeaseLost`]. Exclusive as [`with`](Self::with) is.
    #[inline]
    pub fn with_mut<R>(&mut self, write: impl FnOnce(&mut T) -> R) -> Result<R, LeaseLost> {
        let _access = self.lock.begin_access(self.generation, self.deadline)?;
        // SAFETY: as in `with`: the access byte is held until `write` returns.
        Ok(self.lock.data.with_mut(|data| write(unsafe { &mut *data })))
    }

    /// Releases the lock, waking waiters. Fails with [`LeaseLost::TakenOver`], changing nothing,
    /// if the lease has been taken over. Does not read the clock (see the type's doc).
    #[inline]
    pub fn release(self) -> Result<(), LeaseLost> {
        let this = ManuallyDrop::new(self);
        let released = this.lock.release(this.generation);
        if let Err(_lost) = released {
            crate::trace::warn_event!(token = this.generation, lost = %_lost, "lease lost at release");
        }
        released
    }
}

impl<T: ?Sized, C: Clock> Drop for Lease<'_, T, C> {
    #[inline]
    fn drop(&mut self) {
        // A lease taken over has nothing left to release.
        let _ = self.lock.release(self.generation);
    }
}

impl<T: ?Sized, C: Clock> fmt::Debug for Lease<'_, T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("token", &self.generation)
            .field("remaining", &self.remaining())
            .finish_non_exhaustive()
    }
}

/// Why a [`Lease`] could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LeaseLost {
    /// The lease ran out: the lock's clock passed its deadline (nobody had taken it over yet).
    Expired,
    /// The lease ran out and another acquisition took the lock over; `by` is that acquisition's
    /// token.
    TakenOver {
        /// The token of the lease that took over.
        by: FencingToken,
    },
}

impl fmt::Display for LeaseLost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Expired => f.write_str("the lease ran out"),
            Self::TakenOver { by } => write!(f, "the lease was taken over by token {by}"),
        }
    }
}

impl core::error::Error for LeaseLost {}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::ManualClock;

    #[test]
    fn twenty_four_bytes() {
        assert!(core::mem::size_of::<DeadlineLock<()>>() <= 24);
        assert_eq!(core::mem::size_of::<MonotonicClock>(), 0);
    }

    /// A lock that has issued all but the last `left` generations.
    fn nearly_exhausted(left: u64) -> DeadlineLock<u32, ManualClock> {
        let lock = DeadlineLock::with_clock(0, ManualClock::new());
        lock.state
            .store((MAX_GENERATION - left) << GENERATION_SHIFT, Relaxed);
        lock
    }

    #[test]
    fn the_last_generation_is_issued_then_none() {
        let lock = nearly_exhausted(1);
        let last = lock.try_acquire(Duration::from_secs(1)).unwrap();
        assert_eq!(last.token().get(), MAX_GENERATION);
        last.release().unwrap();
        assert!(lock.try_acquire(Duration::from_secs(1)).is_none());
        assert!(lock
            .acquire_timeout(Duration::from_secs(1), Duration::ZERO)
            .is_none());
        assert_eq!(lock.state.load(Relaxed), MAX_GENERATION << GENERATION_SHIFT);
    }

    #[test]
    fn an_ended_last_lease_is_not_taken_over() {
        let lock = nearly_exhausted(1);
        let last = lock.try_acquire(Duration::ZERO).unwrap();
        assert!(!last.is_valid());
        assert!(lock.try_acquire(Duration::from_secs(1)).is_none());
        assert!(lock
            .acquire_timeout(Duration::from_secs(1), Duration::ZERO)
            .is_none());
        assert_eq!(last.release(), Ok(()));
    }

    #[test]
    fn debug_shows_the_generation() {
        let lock = DeadlineLock::with_clock(0, ManualClock::new());
        let lease = lock.acquire(Duration::from_secs(1));
        assert_eq!(
            format!("{lock:?}"),
            "DeadlineLock { generation: 1, held: true, .. }"
        );
        assert_eq!(
            format!("{lease:?}"),
            "Lease { token: 1, remaining: Some(1s), .. }"
        );
    }
}
