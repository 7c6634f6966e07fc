//! The MySQL client API (MariaDB Connector/C, libmysqlclient): statement
//! texts at entry, the handle's state at return, connection details once per
//! connection and again when its database or connection id changes.
//! mysql_query, mysql_commit, mysql_rollback and mysql_autocommit run
//! through mysql_real_query, so they are seen there, once.

use super::*;
use dbtel_common::{
    mycookie, MyCall, MyCallEvent, MyConnEvent, MyReturnEvent, MysqlOffsets, MY_HEAD_CAP,
};

#[map]
static MY_SCRATCH: PerCpuArray<MyCallEvent> = PerCpuArray::with_max_entries(1, 0);
#[map]
static MY_LAYOUTS: Array<MysqlOffsets> = Array::with_max_entries(MAX_LAYOUTS, 0);
/// Entry → return, by thread: slot `tid % CALL_SLOTS` holds the call a
/// thread is in. An LRU hash insert, lookup and delete cost ~300 ns a call
/// on this path (--probe-stats: my_call 226-275 ns with the insert alone,
/// 50 probes-only); an array slot costs a few. A slot held by another
/// thread's call (two threads, one slot) sends the entry to MY_ARGS. No
/// probed call calls another.
#[map]
static MY_CALLS: Array<CallSlot> = Array::with_max_entries(CALL_SLOTS, 0);
const CALL_SLOTS: u32 = 8192;
/// Slots in use less one (a test sets 0: every thread shares one slot,
/// and the fallback to MY_ARGS is exercised).
#[no_mangle]
static CALL_SLOT_MASK: u32 = CALL_SLOTS - 1;
/// Entry → return for calls whose slot was taken: pid_tgid → (handle, cookie).
#[map]
static MY_ARGS: LruHashMap<u64, [u64; 2]> = LruHashMap::with_max_entries(16384, 0);

/// A thread's call in progress (tid 0: none; no user thread has id 0). A
/// thread claims a free slot with a compare-and-exchange (two threads of one
/// slot may enter at once: a plain check-then-write let both write, and one
/// return found the other's call); only the owner writes it after. A thread
/// that dies inside a call keeps its slot: the slot's other threads use MY_ARGS.
#[repr(C)]
struct CallSlot {
    tid: u64,
    handle: u64,
    cookie: u64,
}

#[inline(always)]
fn call_slot(tid: u64) -> Option<*mut CallSlot> {
    let mask = unsafe { core::ptr::read_volatile(&CALL_SLOT_MASK) };
    MY_CALLS.get_ptr_mut(tid as u32 & mask & (CALL_SLOTS - 1))
}

/// Keeps the handle and cookie of the call `pid_tgid` enters, for its return.
#[inline(always)]
fn keep_call(pid_tgid: u64, handle: u64, c: u64) {
    let tid = pid_tgid & 0xffff_ffff;
    if let Some(slot) = call_slot(tid) {
        let slot = unsafe { &mut *slot };
        // Free (claimed atomically: two threads may try at once), or this
        // thread's own (a call whose return was never seen).
        let (held, _) = unsafe {
            core::intrinsics::atomic_cxchg::<
                u64,
                { core::intrinsics::AtomicOrdering::SeqCst },
                { core::intrinsics::AtomicOrdering::SeqCst },
            >(&mut slot.tid, 0, tid)
        };
        if held == 0 || held == tid {
            slot.handle = handle;
            slot.cookie = c;
            return;
        }
    }
    let _ = MY_ARGS.insert(&pid_tgid, &[handle, c], 0);
}

/// The handle and cookie kept at the entry of the call `pid_tgid` returns from.
#[inline(always)]
fn take_call(pid_tgid: u64) -> Option<[u64; 2]> {
    let tid = pid_tgid & 0xffff_ffff;
    if let Some(slot) = call_slot(tid) {
        let slot = unsafe { &mut *slot };
        if unsafe { core::ptr::read_volatile(&slot.tid) } == tid {
            let kept = [slot.handle, slot.cookie];
            // Only its owner writes a held slot: a plain store frees it.
            unsafe { core::ptr::write_volatile(&mut slot.tid, 0) };
            return Some(kept);
        }
    }
    let kept = unsafe { MY_ARGS.get(&pid_tgid) }.copied();
    if kept.is_some() {
        let _ = MY_ARGS.remove(&pid_tgid);
    }
    kept
}

/// (tgid, MYSQL*) → (MYSQL.db pointer, thread_id) last reported.
#[map]
static MY_CONNS: LruHashMap<[u64; 2], [u64; 2]> = LruHashMap::with_max_entries(16384, 0);

const HEAD_WORDS: usize = MY_HEAD_CAP / 4;
/// A window of a MYSQL or MYSQL_STMT, copied in one helper call.
#[map]
static MY_HEAD: PerCpuArray<[u32; HEAD_WORDS]> = PerCpuArray::with_max_entries(1, 0);

/// Fields of one struct in the traced process: those in the window the
/// layout placed come from one copy of it, the others are read one by one.
struct Fields {
    base: u64,
    from: u32,
    /// Bytes copied (0: nothing, every field is read alone).
    len: u32,
    words: *const [u32; HEAD_WORDS],
}

impl Fields {
    /// Copies `len` bytes at `base + from` (len 0: none).
    #[inline(always)]
    fn of(base: u64, from: u32, len: u32) -> Fields {
        let mut f = Fields {
            base,
            from,
            len: 0,
            words: core::ptr::null(),
        };
        if len == 0 || base == 0 {
            return f;
        }
        let Some(h) = MY_HEAD.get_ptr_mut(0) else {
            return f;
        };
        let bytes: &mut [u8; MY_HEAD_CAP] = unsafe { &mut *h.cast() };
        // 1 ..= MY_HEAD_CAP, in a form the verifier can bound.
        let n = ((len as usize).wrapping_sub(1) & (MY_HEAD_CAP - 1)) + 1;
        if unsafe { bpf_probe_read_user_buf((base + from as u64) as *const u8, &mut bytes[..n]) }
            .is_ok()
        {
            f.len = n as u32;
            f.words = h;
        }
        f
    }

    /// The word index of `size` bytes at `off`, if the copy holds them.
    #[inline(always)]
    fn word(&self, off: u32, size: u32) -> Option<usize> {
        let rel = off.wrapping_sub(self.from);
        // Opaque to LLVM: knowing len <= MY_HEAD_CAP, it would drop the
        // index masks below as redundant, and the verifier needs them.
        let len = unsafe { core::ptr::read_volatile(&self.len) };
        (len != 0 && rel % 4 == 0 && rel < len && len - rel >= size).then_some((rel / 4) as usize)
    }

    #[inline(always)]
    fn u32_at(&self, off: u32) -> Option<u32> {
        match self.word(off, 4) {
            // Masked, not compared: the verifier sees the bound on the register used.
            Some(i) => Some(unsafe { (*self.words)[i & (HEAD_WORDS - 1)] }),
            None => read::<u32>(self.base + off as u64),
        }
    }

    #[inline(always)]
    fn u64_at(&self, off: u32) -> Option<u64> {
        match self.word(off, 8) {
            Some(i) => {
                let w = unsafe { &*self.words };
                let (lo, hi) = (w[i & (HEAD_WORDS - 1)], w[(i + 1) & (HEAD_WORDS - 1)]);
                Some(lo as u64 | (hi as u64) << 32)
            }
            None => read::<u64>(self.base + off as u64),
        }
    }
}

#[inline(always)]
fn offsets(idx: u32) -> Option<&'static MysqlOffsets> {
    MY_LAYOUTS.get(idx).filter(|l| l.valid != 0)
}

/// The connection a handle belongs to.
#[inline(always)]
fn connection(handle: u64, c: u64, l: &MysqlOffsets) -> u64 {
    if c & mycookie::STMT != 0 {
        read::<u64>(handle + l.stmt_mysql as u64).unwrap_or(0)
    } else {
        handle
    }
}

/// Entry of every probed call: the cookie says what to do.
#[uprobe]
pub fn my_call(ctx: ProbeContext) -> u32 {
    if !client_selected() {
        return 0;
    }
    let c = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let handle: u64 = ctx.arg(0).unwrap_or(0);
    if c & mycookie::RETURN != 0 {
        keep_call(bpf_get_current_pid_tgid(), handle, c);
    }
    if c & mycookie::EMIT == 0 {
        return 0;
    }
    let Some(l) = offsets(mycookie::layout(c)) else {
        return 0;
    };
    let mysql = connection(handle, c, l);
    // Statement calls too: a client may prepare before it runs any plain
    // query (sysbench never runs one), and its spans need the connection.
    if mycookie::call(c) != MyCall::Close as u32 {
        note_conn(mysql, l);
    }
    let Some(ev) = MY_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    let ev = unsafe { &mut *ev };
    ev.hdr = header(Kind::MyCall, mycookie::call(c), handle);
    ev.mysql = mysql;
    ev.text_len = 0;
    ev.flags = 0;
    if c & mycookie::TEXT != 0 {
        let (p, len): (u64, u64) = (ctx.arg(1).unwrap_or(0), ctx.arg(2).unwrap_or(0));
        let (n, flags) = crate::text::copy(&mut ev.text, p, Some(len));
        ev.text_len = n;
        ev.flags = flags;
    }
    let len = MyCallEvent::TEXT_OFFSET + ev.text_len as usize;
    let bytes: &[u8; core::mem::size_of::<MyCallEvent>()] =
        unsafe { &*(ev as *const MyCallEvent).cast() };
    if len <= bytes.len()
        && EVENTS
            .output::<[u8]>(&bytes[..len], wakeup_flags())
            .is_err()
    {
        bump(counter::RINGBUF_FULL);
    }
    0
}

/// Return of a call whose entry kept its handle: the handle's state now.
#[uretprobe]
pub fn my_return(ctx: RetProbeContext) -> u32 {
    if !client_selected() {
        return 0;
    }
    let Some([handle, c]) = take_call(bpf_get_current_pid_tgid()) else {
        bump(counter::MY_RETURN_UNMATCHED);
        return 0;
    };
    let Some(l) = offsets(mycookie::layout(c)) else {
        return 0;
    };
    let ret: u64 = ctx.ret();
    let Some(mut entry) = EVENTS.reserve::<MyReturnEvent>(0) else {
        bump(counter::RINGBUF_FULL);
        return 0;
    };
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    let stmt = c & mycookie::STMT != 0;
    // A statement's fields first (its window holds its connection's pointer),
    // taken out before the connection's window reuses MY_HEAD:
    // (mysql, stmt_id, [errno, affected rows, rows, field count]).
    let (mysql, stmt_id, stmt_state) = if stmt {
        let s = Fields::of(handle, l.stmt_head, l.stmt_head_len);
        (
            s.u64_at(l.stmt_mysql).unwrap_or(0),
            s.u64_at(l.stmt_id).unwrap_or(0),
            [
                s.u32_at(l.stmt_last_errno).unwrap_or(0) as u64,
                s.u64_at(l.stmt_affected_rows).unwrap_or(u64::MAX),
                s.u64_at(l.stmt_row_count).unwrap_or(0),
                s.u32_at(l.stmt_field_count).unwrap_or(0) as u64,
            ],
        )
    } else {
        (handle, 0, [0; 4])
    };
    let m = Fields::of(mysql, l.head, l.head_len);
    ev.hdr = header(Kind::MyReturn, mycookie::call(c), handle);
    ev.mysql = mysql;
    ev.ret = ret;
    ev.thread_id = m.u64_at(l.thread_id).unwrap_or(0);
    ev.server_status = m.u32_at(l.server_status).unwrap_or(0);
    ev._pad = 0;
    ev.sqlstate = [0; 8];
    ev.stmt_id = stmt_id;
    let state = if stmt {
        ev.errno = stmt_state[0] as u32;
        ev.affected_rows = stmt_state[1];
        ev.rows = stmt_state[2];
        ev.field_count = stmt_state[3] as u32;
        handle + l.stmt_sqlstate as u64
    } else {
        ev.errno = read::<u32>(mysql + l.last_errno as u64).unwrap_or(0);
        ev.affected_rows = m.u64_at(l.affected_rows).unwrap_or(u64::MAX);
        ev.field_count = m.u32_at(l.field_count).unwrap_or(0);
        // mysql_store_result's MYSQL_RES: its buffered rows.
        ev.rows = if ret != 0 && mycookie::call(c) == MyCall::StoreResult as u32 {
            read::<u64>(ret + l.res_row_count as u64).unwrap_or(0)
        } else {
            0
        };
        mysql + l.sqlstate as u64
    };
    if ev.errno != 0 {
        if let Some(s) = read::<[u8; 5]>(state) {
            ev.sqlstate[..5].copy_from_slice(&s);
        }
    }
    entry.submit(wakeup_flags());
    0
}

/// Sends the connection's details when this process first uses it, and
/// again when its database (mysql_select_db, mysql_change_user, USE in the
/// CLI) or its connection id (a reconnect) changed.
#[inline(always)]
fn note_conn(mysql: u64, l: &MysqlOffsets) {
    if mysql == 0 {
        return;
    }
    let key = [bpf_get_current_pid_tgid() >> 32, mysql];
    let m = Fields::of(mysql, l.head, l.head_len);
    let now = [
        m.u64_at(l.db).unwrap_or(0),
        m.u64_at(l.thread_id).unwrap_or(0),
    ];
    if let Some(last) = MY_CONNS.get_ptr_mut(&key) {
        let last = unsafe { &mut *last };
        if last[0] == now[0] && last[1] == now[1] {
            return;
        }
        *last = now;
    } else {
        let _ = MY_CONNS.insert(&key, &now, 0);
    }
    let Some(mut entry) = EVENTS.reserve::<MyConnEvent>(0) else {
        bump(counter::RINGBUF_FULL);
        return;
    };
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.hdr = header(Kind::MyConn, 0, mysql);
    ev.thread_id = now[1];
    ev._pad = 0;
    ev.port = 0;
    ev.db[0] = 0;
    ev.host[0] = 0;
    ev.socket[0] = 0;
    ev.version[0] = 0;
    if now[0] != 0 {
        let _ = unsafe { bpf_probe_read_user_str_bytes(now[0] as *const u8, &mut ev.db) };
    }
    if let Some(p) = read::<u64>(mysql + l.server_version as u64).filter(|p| *p != 0) {
        let _ = unsafe { bpf_probe_read_user_str_bytes(p as *const u8, &mut ev.version) };
    }
    if l.endpoint_valid != 0 {
        ev.port = read::<u32>(mysql + l.port as u64).unwrap_or(0);
        if let Some(p) = read::<u64>(mysql + l.host as u64).filter(|p| *p != 0) {
            let _ = unsafe { bpf_probe_read_user_str_bytes(p as *const u8, &mut ev.host) };
        }
        if let Some(p) = read::<u64>(mysql + l.unix_socket as u64).filter(|p| *p != 0) {
            let _ = unsafe { bpf_probe_read_user_str_bytes(p as *const u8, &mut ev.socket) };
        }
    }
    entry.submit(wakeup_flags());
}
