//! Connections by (pid, MYSQL*), at most `cap` per process: a program that
//! leaks connection handles (never calls mysql_close) must not grow the
//! agent. Past the cap, the least recently used idle one is forgotten.

use std::collections::VecDeque;

pub type Key = (u32, u64);

struct Slot<V> {
    /// Its last use (the newest entry of its handle in the order queue).
    seq: u64,
    v: V,
}

#[derive(Default)]
struct Order {
    /// (handle, seq) by last use, oldest first; entries of handles used
    /// again or removed since are stale: skipped, and swept when too many.
    queue: VecDeque<(u64, u64)>,
    live: usize,
    next_seq: u64,
}

pub struct Conns<V> {
    map: crate::FastMap<Key, Slot<V>>,
    procs: crate::FastMap<u32, Order>,
    cap: usize,
    /// The key touched last, while it is held: touched again (a statement's
    /// call and returns), it is already the most recently used of its process.
    last: Option<Key>,
}

impl<V> Conns<V> {
    pub fn new(cap: usize) -> Self {
        Conns {
            map: Default::default(),
            procs: Default::default(),
            cap: cap.max(1),
            last: None,
        }
    }

    pub fn get(&self, key: Key) -> Option<&V> {
        self.map.get(&key).map(|s| &s.v)
    }

    pub fn get_mut(&mut self, key: Key) -> Option<&mut V> {
        self.map.get_mut(&key).map(|s| &mut s.v)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.map.values().map(|s| &s.v)
    }

    /// The connections of a process.
    pub fn keys_of(&self, pid: u32) -> Vec<Key> {
        self.map.keys().filter(|k| k.0 == pid).copied().collect()
    }

    /// `key` is used now: it becomes the most recently used, inserted with
    /// `new()` if absent. A connection forgotten to make room is returned:
    /// the least recently used for which `idle` holds, else the least
    /// recently used.
    pub fn touch(
        &mut self,
        key: Key,
        new: impl FnOnce() -> V,
        idle: impl Fn(&V) -> bool,
    ) -> Option<(Key, V)> {
        if self.last == Some(key) {
            return None;
        }
        self.last = Some(key);
        let p = self.procs.entry(key.0).or_default();
        let seq = p.next_seq;
        p.next_seq += 1;
        p.queue.push_back((key.1, seq));
        let mut evicted = None;
        match self.map.get_mut(&key) {
            Some(slot) => slot.seq = seq,
            None => {
                self.map.insert(key, Slot { seq, v: new() });
                p.live += 1;
                if p.live > self.cap {
                    evicted = Self::evict(&mut self.map, p, key.0, idle);
                }
            }
        }
        if p.queue.len() > 2 * self.cap {
            let map = &self.map;
            p.queue
                .retain(|&(h, s)| map.get(&(key.0, h)).is_some_and(|slot| slot.seq == s));
        }
        evicted
    }

    fn evict(
        map: &mut crate::FastMap<Key, Slot<V>>,
        p: &mut Order,
        pid: u32,
        idle: impl Fn(&V) -> bool,
    ) -> Option<(Key, V)> {
        fn live<V>(
            map: &crate::FastMap<Key, Slot<V>>,
            pid: u32,
            (h, s): (u64, u64),
        ) -> Option<&Slot<V>> {
            map.get(&(pid, h)).filter(|slot| slot.seq == s)
        }
        while let Some(&front) = p.queue.front() {
            if live(map, pid, front).is_some() {
                break;
            }
            p.queue.pop_front();
        }
        // The newest entry is the one just inserted: never a candidate.
        let candidates = p.queue.len().saturating_sub(1);
        let pick = p
            .queue
            .iter()
            .take(candidates)
            .copied()
            .find(|&e| live(map, pid, e).is_some_and(|slot| idle(&slot.v)));
        let pick = pick.or_else(|| p.queue.front().copied().filter(|_| candidates > 0))?;
        p.live -= 1;
        let k = (pid, pick.0);
        map.remove(&k).map(|slot| (k, slot.v))
    }

    pub fn remove(&mut self, key: Key) -> Option<V> {
        if self.last == Some(key) {
            self.last = None;
        }
        let slot = self.map.remove(&key)?;
        if let Some(p) = self.procs.get_mut(&key.0) {
            p.live -= 1;
            if p.live == 0 {
                self.procs.remove(&key.0);
            }
        }
        Some(slot.v)
    }

    /// Connections held for a process, and its order entries (for bound checks).
    pub fn held(&self, pid: u32) -> (usize, usize) {
        self.procs
            .get(&pid)
            .map_or((0, 0), |p| (p.live, p.queue.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_recently_used_idle_goes_first() {
        let mut c: Conns<bool> = Conns::new(3); // value: busy
        for h in 1..=3 {
            assert!(c.touch((7, h), || false, |b| !b).is_none());
        }
        *c.get_mut((7, 1)).unwrap() = true; // 1 busy
        c.touch((7, 2), || unreachable!(), |b| !b); // 2 used again: 3 is now the oldest idle
        assert_eq!(c.touch((7, 4), || false, |b| !b), Some(((7, 3), false)));
        assert_eq!(c.touch((7, 5), || false, |b| !b), Some(((7, 2), false)));
        assert!(
            c.touch((8, 1), || false, |b| !b).is_none(),
            "another process has its own cap"
        );
        // All busy: the least recently used goes all the same.
        for h in [4, 5] {
            *c.get_mut((7, h)).unwrap() = true;
        }
        assert_eq!(c.touch((7, 6), || false, |b| !b), Some(((7, 1), true)));
        assert_eq!(c.held(7).0, 3);
        assert_eq!(c.keys_of(8), [(8, 1)]);
        assert_eq!(c.remove((8, 1)), Some(false));
        assert_eq!((c.held(8), c.get((8, 1))), ((0, 0), None));
    }

    #[test]
    fn touching_the_last_key_again_moves_nothing() {
        let mut c: Conns<u32> = Conns::new(2);
        c.touch((7, 1), || 1, |_| true);
        c.touch((7, 1), || unreachable!(), |_| true);
        assert_eq!(
            c.held(7),
            (1, 1),
            "one order entry: nothing was pushed again"
        );
        c.touch((7, 2), || 2, |_| true);
        assert_eq!(c.remove((7, 2)), Some(2));
        // Removed while it was the last: touched again, it is new.
        assert!(c.touch((7, 2), || 3, |_| true).is_none());
        assert_eq!(c.get((7, 2)), Some(&3));
        // 1 is the least recently used: a third connection evicts it.
        assert_eq!(c.touch((7, 3), || 4, |_| true), Some(((7, 1), 1)));
    }

    #[test]
    fn the_order_queue_stays_bounded() {
        let mut c: Conns<()> = Conns::new(3);
        for _ in 0..10_000 {
            c.touch((7, 1), || (), |_| true);
        }
        assert!(c.held(7).1 <= 2 * 3 + 1);
        for h in 0..10_000 {
            c.touch((7, h), || (), |_| true);
        }
        let (live, order) = c.held(7);
        assert_eq!(live, 3);
        assert!(order <= 2 * 3 + 1, "{order}");
        assert!(c.get((7, 9_999)).is_some() && c.get((7, 9_996)).is_none());
    }
}
