//! The table of open connections: a cap, and eviction of the connection
//! that has waited longest for a request head, so idle sockets cannot lock
//! scrapes out. A scraper that has just had its answer is the last to go.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// Orders the moments connections became idle; 0 is never used.
static IDLE_SINCE: AtomicU64 = AtomicU64::new(1);

/// Whether a connection waits for a request head (and so may be evicted):
/// 0 while a request is being answered, else when it began to wait.
pub struct IdleFlag(AtomicU64);

impl IdleFlag {
    fn new_idle() -> Self {
        IdleFlag(AtomicU64::new(IDLE_SINCE.fetch_add(1, Ordering::Relaxed)))
    }

    pub fn set(&self, idle: bool) {
        let since = if idle {
            IDLE_SINCE.fetch_add(1, Ordering::Relaxed)
        } else {
            0
        };
        // Read and written on the one serving thread: no ordering needed.
        self.0.store(since, Ordering::Relaxed);
    }

    /// When the connection began to wait, if it does.
    fn since(&self) -> Option<u64> {
        Some(self.0.load(Ordering::Relaxed)).filter(|&s| s != 0)
    }
}

struct Slot {
    idle: Arc<IdleFlag>,
    evict: Notify,
}

/// Open connections by age (ids only grow).
pub struct Connections {
    cap: usize,
    table: Mutex<Table>,
}

struct Table {
    next_id: u64,
    open: BTreeMap<u64, Arc<Slot>>,
}

/// An admitted connection: leaves the table when dropped.
pub struct Connection {
    id: u64,
    slot: Arc<Slot>,
    connections: Arc<Connections>,
}

impl Connections {
    pub fn new(cap: usize) -> Self {
        Connections {
            cap,
            table: Mutex::new(Table {
                next_id: 0,
                open: BTreeMap::new(),
            }),
        }
    }

    /// A place for a new connection, evicting the oldest idle one at the cap;
    /// None when every connection is busy with a request.
    pub fn admit(self: &Arc<Self>) -> Option<Connection> {
        let mut table = self.table.lock();
        if table.open.len() >= self.cap && !evict_oldest_idle(&mut table) {
            return None;
        }
        let id = table.next_id;
        table.next_id += 1;
        let slot = Arc::new(Slot {
            idle: Arc::new(IdleFlag::new_idle()),
            evict: Notify::new(),
        });
        table.open.insert(id, Arc::clone(&slot));
        Some(Connection {
            id,
            slot,
            connections: Arc::clone(self),
        })
    }

    /// Evicts the connection idle the longest, if any.
    pub fn evict_oldest_idle(&self) -> bool {
        evict_oldest_idle(&mut self.table.lock())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.lock().open.len()
    }
}

fn evict_oldest_idle(table: &mut Table) -> bool {
    // At most the cap to scan, only when the table is full.
    let Some(id) = table
        .open
        .iter()
        .filter_map(|(id, slot)| Some((slot.idle.since()?, *id)))
        .min()
        .map(|(_, id)| id)
    else {
        return false;
    };
    if let Some(slot) = table.open.remove(&id) {
        // Stored if the task is not waiting yet: it still sees it.
        slot.evict.notify_one();
    }
    true
}

impl Connection {
    pub fn idle_flag(&self) -> Arc<IdleFlag> {
        Arc::clone(&self.slot.idle)
    }

    /// Completes when this connection is evicted: drop it then.
    pub fn evicted(&self) -> impl Future<Output = ()> + '_ {
        self.slot.evict.notified()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.connections.table.lock().open.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_idle_longest_makes_room_busy_ones_stay() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let connections = Arc::new(Connections::new(3));
        let a = connections.admit().unwrap();
        let b = connections.admit().unwrap();
        let c = connections.admit().unwrap();
        a.idle_flag().set(false); // busy with a request
        b.idle_flag().set(false);
        b.idle_flag().set(true); // answered: idle again, since just now
        let d = connections.admit().unwrap(); // evicts c, idle the longest
        assert_eq!(connections.len(), 3);
        runtime.block_on(c.evicted()); // completes: c was told
        drop(c); // already out of the table
        assert_eq!(connections.len(), 3);
        let e = connections.admit().unwrap(); // evicts b
        runtime.block_on(b.evicted());
        d.idle_flag().set(false);
        e.idle_flag().set(false);
        assert!(connections.admit().is_none()); // everyone busy: refused
        drop(a);
        assert_eq!(connections.len(), 2);
        assert!(connections.admit().is_some());
    }
}
