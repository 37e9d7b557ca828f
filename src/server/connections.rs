//! The table of open connections: a cap, and eviction of the oldest
//! connection that has not sent a complete request head, so idle sockets
//! cannot lock scrapes out.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// Whether a connection waits for a request head (and so may be evicted).
pub struct IdleFlag(AtomicBool);

impl IdleFlag {
    pub fn set(&self, idle: bool) {
        // Read and written on the one serving thread: no ordering needed.
        self.0.store(idle, Ordering::Relaxed);
    }

    fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
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
            idle: Arc::new(IdleFlag(AtomicBool::new(true))),
            evict: Notify::new(),
        });
        table.open.insert(id, Arc::clone(&slot));
        Some(Connection {
            id,
            slot,
            connections: Arc::clone(self),
        })
    }

    /// Evicts the oldest idle connection, if any.
    pub fn evict_oldest_idle(&self) -> bool {
        evict_oldest_idle(&mut self.table.lock())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.lock().open.len()
    }
}

fn evict_oldest_idle(table: &mut Table) -> bool {
    let Some(id) = table
        .open
        .iter()
        .find(|(_, slot)| slot.idle.get())
        .map(|(id, _)| *id)
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
    fn the_oldest_idle_connection_makes_room_busy_ones_stay() {
        let connections = Arc::new(Connections::new(3));
        let a = connections.admit().unwrap();
        let b = connections.admit().unwrap();
        let c = connections.admit().unwrap();
        a.idle_flag().set(false); // busy with a request
        let d = connections.admit().unwrap(); // evicts b, the oldest idle
        assert_eq!(connections.len(), 3);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(b.evicted()); // completes: b was told
        c.idle_flag().set(false);
        d.idle_flag().set(false);
        assert!(connections.admit().is_none()); // everyone busy: refused
        drop(b); // already out of the table
        assert_eq!(connections.len(), 3);
        drop(a);
        assert_eq!(connections.len(), 2);
        assert!(connections.admit().is_some());
    }
}
