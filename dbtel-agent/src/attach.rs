//! Loads the embedded eBPF object and attaches the uprobes of a client
//! library's [`Plan`] (whatever its engine) in one process at a time
//! (perf-event pid filter: other processes using the same library never hit
//! the probes), and its server probes to PostgreSQL executables (see `attach_server` for how those are filtered).

use std::{
    collections::{HashMap, HashSet},
    num::NonZeroU32,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        uprobe::{UProbeAttachPoint, UProbeLinkId, UProbeScope},
        TracePoint, UProbe,
    },
    Ebpf, EbpfLoader,
};
use dbtel_common::{
    counter, loader, verdict, LibpqLayout, MysqlOffsets, SiteSpec, MAX_LAYOUTS, MAX_SITES, TEXT_CAP,
};

use crate::{
    engine::{Layout, Plan},
    host::loader::LoaderTarget,
};

mod error;
mod server;
mod tracepoints;

pub use error::AttachError;
use tracepoints::{fork_offsets, tracepoint_field, EXEC_TRACEPOINT, TRACEPOINTS};

const PROGRAMS: &[&str] = &[
    "pq_query",
    "pq_result",
    "pq_getresult",
    "pq_getresult_ret",
    "pq_pipeline",
    "pq_pipeline_ret",
    "pq_finish",
    "server_site",
    "server_site_ret",
    "dl_state",
    "my_call",
    "my_return",
];

/// The server's probe sites' programs (see [`Probes::load_server_programs`]).
const SERVER_PROGRAMS: &[&str] = &["server_site", "server_site_ret"];

pub struct Probes {
    ebpf: Ebpf,
    /// Server executables (device, inode) probed, and their sites' count.
    server_files: HashMap<(u64, u64), usize>,
    sites: u32,
    tracepoints_on: bool,
    exec_on: bool,
    /// --all: client probes sit on library files for every process (the
    /// kernel side chooses per process), not on one process at a time.
    host_wide: bool,
    /// Mounted (or the reason it could not be): only server tracing needs it.
    tracefs: Result<PathBuf, String>,
    layouts: Vec<LibpqLayout>,
    mysql_layouts: Vec<MysqlOffsets>,
    /// (pid, device, inode) of every libpq already probed for that process.
    attached: HashSet<(u32, u64, u64)>,
    /// (pid, device, inode) of every loader whose hook is probed for that process.
    loaders: HashSet<(u32, u64, u64)>,
    links: HashMap<u32, Vec<(&'static str, UProbeLinkId)>>,
    /// Links let go of, closing on threads of their own (see `detach_pid`).
    closing: Vec<std::thread::JoinHandle<()>>,
}

impl Probes {
    /// `max_text`: longest query text copied from the traced process;
    /// `probes_only`: every probe returns at once (benchmarks: the traps' own cost);
    /// `host_wide`: --all (see [`Probes::start_host_wide`]).
    pub fn load(
        object: &[u8],
        max_text: u32,
        probes_only: bool,
        host_wide: bool,
    ) -> Result<Self, AttachError> {
        // Named here, not left to the verifier's or the map's error.
        if let Some(why) = crate::host::kernel::too_old(&crate::host::kernel::release()) {
            return Err(AttachError::Kernel(why));
        }
        let probes_only = probes_only as u32;
        let max_text = max_text.clamp(16, TEXT_CAP as u32 - 2);
        let tracefs = crate::host::tracefs::ensure().map_err(|e| e.to_string());
        // Without tracefs no server is traced (attach_server says why): the layout is moot.
        let (fork_parent, fork_child) = tracefs.as_deref().map_or(Some((24, 44)), fork_offsets).unwrap_or_else(|| {
            log::warn!("cannot read sched_process_fork's format from tracefs: assuming the pre-6.x layout; backends forked later may go untraced");
            (24, 44)
        });
        let exec_filename = tracefs
            .as_deref()
            .ok()
            .and_then(|t| tracepoint_field(t, "sched_process_exec", "filename"))
            .unwrap_or(8);
        let call_slot_mask = mysql_call_slots(std::env::var(CALL_SLOTS_VAR).ok().as_deref()) - 1;
        let mut ebpf = EbpfLoader::new()
            .override_global("MAX_TEXT", &max_text, true)
            .override_global("CALL_SLOT_MASK", &call_slot_mask, true)
            .override_global("PROBES_ONLY", &probes_only, true)
            .override_global("FORK_PARENT_OFF", &fork_parent, true)
            .override_global("FORK_CHILD_OFF", &fork_child, true)
            .override_global("TRACE_ALL", &(host_wide as u32), true)
            .override_global("EXEC_FILENAME_OFF", &exec_filename, true)
            .load(object)
            .map_err(AttachError::Load)?;
        for (name, _) in TRACEPOINTS.iter().chain([&EXEC_TRACEPOINT]) {
            let p: &mut TracePoint = ebpf
                .program_mut(name)
                .expect("in the object")
                .try_into()
                .map_err(|error| AttachError::Program { name, error })?;
            p.load()
                .map_err(|error| AttachError::Program { name, error })?;
        }
        // By PID or command, the server programs are loaded with the first
        // server traced: their verification takes ~0.6 s of CPU, for nothing
        // when only clients are. Host-wide, a server may start at any time,
        // and must be traced from its first query: they are loaded now.
        let now = |n: &&&str| host_wide || !SERVER_PROGRAMS.contains(n);
        for name in PROGRAMS.iter().filter(now) {
            let p: &mut UProbe = ebpf
                .program_mut(name)
                .expect("program is in the embedded object")
                .try_into()
                .map_err(|error| AttachError::Program { name, error })?;
            p.load()
                .map_err(|error| AttachError::Program { name, error })?;
        }
        Ok(Probes {
            ebpf,
            server_files: HashMap::new(),
            sites: 0,
            tracepoints_on: false,
            exec_on: false,
            host_wide,
            tracefs,
            layouts: Vec::new(),
            mysql_layouts: Vec::new(),
            attached: HashSet::new(),
            loaders: HashSet::new(),
            links: HashMap::new(),
            closing: Vec::new(),
        })
    }

    /// Loads the server programs unless they are (`check`, which verifies
    /// every program; attaching loads them itself, see [`Probes::uprobe`]).
    pub fn load_server_programs(&mut self) -> Result<(), AttachError> {
        for name in SERVER_PROGRAMS {
            self.uprobe(name)?;
        }
        Ok(())
    }

    /// A uprobe program to attach, loaded first if it is not yet (the server
    /// programs, by PID or command: see [`Probes::load`]).
    fn uprobe(&mut self, name: &'static str) -> Result<&mut UProbe, AttachError> {
        let p: &mut UProbe = self
            .ebpf
            .program_mut(name)
            .expect("program is in the embedded object")
            .try_into()
            .map_err(|error| AttachError::Program { name, error })?;
        if p.fd().is_err() {
            p.load()
                .map_err(|error| AttachError::Program { name, error })?;
        }
        Ok(p)
    }

    pub fn ring_buffer(&mut self) -> RingBuf<MapData> {
        RingBuf::try_from(self.ebpf.take_map("EVENTS").expect("EVENTS map"))
            .expect("EVENTS is a ring buffer")
    }

    fn layout_index(&mut self, l: &LibpqLayout) -> Result<u32, AttachError> {
        if let Some(i) = self.layouts.iter().position(|x| x == l) {
            return Ok(i as u32);
        }
        if self.layouts.len() as u32 >= MAX_LAYOUTS {
            return Err(AttachError::TooManyLayouts);
        }
        let idx = self.layouts.len() as u32;
        let mut map: Array<_, LibpqLayout> =
            Array::try_from(self.ebpf.map_mut("LAYOUTS").expect("LAYOUTS map"))?;
        map.set(idx, *l, 0)?;
        self.layouts.push(*l);
        Ok(idx)
    }

    fn mysql_index(&mut self, l: &MysqlOffsets) -> Result<u32, AttachError> {
        if let Some(i) = self.mysql_layouts.iter().position(|x| x == l) {
            return Ok(i as u32);
        }
        if self.mysql_layouts.len() as u32 >= MAX_LAYOUTS {
            return Err(AttachError::TooManyLayouts);
        }
        let idx = self.mysql_layouts.len() as u32;
        let mut map: Array<_, MysqlOffsets> =
            Array::try_from(self.ebpf.map_mut("MY_LAYOUTS").expect("MY_LAYOUTS map"))?;
        map.set(idx, *l, 0)?;
        self.mysql_layouts.push(*l);
        Ok(idx)
    }

    /// True if this library file is already probed for this process (host-wide: for all).
    pub fn is_attached(&self, pid: u32, host_path: &Path) -> bool {
        crate::host::process::file_id(host_path)
            .is_some_and(|(dev, ino)| self.attached.contains(&(self.owner(pid), dev, ino)))
    }

    /// Whose probes these are: the process's, or host-wide (0) for every process.
    fn owner(&self, pid: u32) -> u32 {
        if self.host_wide {
            0
        } else {
            pid
        }
    }

    /// Places every probe of a client library's plan, for its process (or
    /// with --all for every process): all or none. Returns the number of
    /// probes placed (0 if the file already was probed there).
    pub fn attach_plan(&mut self, plan: &Plan) -> Result<usize, AttachError> {
        let id = crate::host::process::file_id(&plan.host_path);
        let owner = self.owner(plan.pid);
        if let Some((dev, ino)) = id {
            if self.attached.contains(&(owner, dev, ino)) {
                if matches!(plan.layout, Layout::Sites(_)) {
                    // --all: another server running a file already probed.
                    self.server_pids()?.insert(
                        plan.pid,
                        dbtel_common::ServerProc::of(plan.pid),
                        0,
                    )?;
                }
                return Ok(0);
            }
        }
        let scope = match owner {
            0 => UProbeScope::AllProcesses,
            pid => UProbeScope::OneProcess(NonZeroU32::new(pid).expect("pid is not 0")),
        };
        // The layout's slot goes in the cookie's high half; a server's sites
        // are stored from a base the cookie's low half is added to.
        let (slot, base) = match &plan.layout {
            Layout::Libpq(l) => (self.layout_index(l)?, 0),
            Layout::Mysql(l) => (self.mysql_index(l)?, 0),
            Layout::Sites(specs) => (0, self.store_sites(specs)?),
        };
        let mut placed: Vec<(&'static str, UProbeLinkId)> = Vec::new();
        for point in &plan.points {
            let cookie = u64::from(point.cookie + base) | (u64::from(slot) << 32);
            let p = self.uprobe(point.program)?;
            let at = UProbeAttachPoint {
                location: point.offset.into(),
                cookie: Some(cookie),
            };
            match p.attach(at, &plan.host_path, scope) {
                Ok(link) => placed.push((point.program, link)),
                Err(error) => {
                    // All or nothing: a half-probed library would produce wrong spans.
                    for (prog, link) in placed {
                        let p: &mut UProbe = self
                            .ebpf
                            .program_mut(prog)
                            .expect("loaded")
                            .try_into()
                            .expect("uprobe");
                        let _ = p.detach(link);
                    }
                    return Err(AttachError::Attach {
                        pid: plan.pid,
                        path: plan.path.clone(),
                        function: point.function,
                        error,
                    });
                }
            }
        }
        let n = placed.len();
        self.links.entry(owner).or_default().extend(placed);
        if let Some((dev, ino)) = id {
            self.attached.insert((owner, dev, ino));
        }
        if matches!(plan.layout, Layout::Sites(_)) {
            // The site program emits for the processes in SERVER_PIDS only.
            self.server_pids()?
                .insert(plan.pid, dbtel_common::ServerProc::of(plan.pid), 0)?;
        }
        Ok(n)
    }

    /// Stores probe site specs in the kernel's array; returns the first slot.
    fn store_sites(&mut self, specs: &[SiteSpec]) -> Result<u32, AttachError> {
        if self.sites + specs.len() as u32 > MAX_SITES {
            return Err(AttachError::TooManySites);
        }
        let mut array: Array<_, SiteSpec> =
            Array::try_from(self.ebpf.map_mut("SITES").expect("SITES map"))?;
        let first = self.sites;
        for (i, s) in specs.iter().enumerate() {
            array.set(first + i as u32, *s, 0)?;
        }
        self.sites += specs.len() as u32;
        Ok(first)
    }

    /// True if this loader's hook is probed for this process (host-wide: for all).
    pub fn has_loader(&self, pid: u32, id: (u64, u64)) -> bool {
        let owner = if self.host_wide { 0 } else { pid };
        self.loaders.contains(&(owner, id.0, id.1))
    }

    /// Probes a loader's hook (see crate::host::loader) for one process, or with
    /// --all for every process. `hold`: stop the process at each load until
    /// the agent continues it (never host-wide). Returns false if the hook
    /// was already probed there.
    pub fn attach_loader(
        &mut self,
        pid: u32,
        ld: &LoaderTarget,
        hold: bool,
    ) -> Result<bool, AttachError> {
        let owner = if self.host_wide { 0 } else { pid };
        let id = crate::host::process::file_id(&ld.host_path);
        if let Some((dev, ino)) = id {
            if !self.loaders.insert((owner, dev, ino)) {
                return Ok(false);
            }
        }
        let scope = match owner {
            0 => UProbeScope::AllProcesses,
            pid => UProbeScope::OneProcess(NonZeroU32::new(pid).expect("pid is not 0")),
        };
        let cookie = loader::make(ld.state_delta, hold && owner != 0);
        let p: &mut UProbe = self
            .ebpf
            .program_mut("dl_state")
            .expect("loaded")
            .try_into()
            .expect("uprobe");
        let point = UProbeAttachPoint {
            location: ld.offset.into(),
            cookie: Some(cookie),
        };
        match p.attach(point, &ld.host_path, scope) {
            Ok(link) => {
                self.links
                    .entry(owner)
                    .or_default()
                    .push(("dl_state", link));
                Ok(true)
            }
            Err(error) => {
                if let Some((dev, ino)) = id {
                    self.loaders.remove(&(owner, dev, ino));
                }
                Err(AttachError::Attach {
                    pid,
                    path: ld.path.clone(),
                    function: "_dl_debug_state",
                    error,
                })
            }
        }
    }

    /// --all: the agent's verdict on a client process (the kernel side stops
    /// recording one that is excluded).
    pub fn exclude_client(&mut self, pid: u32) {
        if let Ok(mut m) = BpfHashMap::<_, u32, u8>::try_from(
            self.ebpf.map_mut("CLIENT_PIDS").expect("CLIENT_PIDS map"),
        ) {
            let _ = m.insert(pid, verdict::EXCLUDED, 0);
        }
    }

    /// Removes a process's probes (it exited, or the agent is done with it).
    /// Closing a uprobe waits for RCU grace periods, partly under a kernel
    /// mutex (0.1 to 0.25 s each on the test machine: a dozen, one after the
    /// other, took 2 s; closed at once, 1.1 s), so they close on threads of
    /// their own while the agent goes on reading events; `finish_detaching`
    /// waits for them.
    pub fn detach_pid(&mut self, pid: u32) {
        self.closing.retain(|h| !h.is_finished());
        for (prog, link) in self.links.remove(&pid).unwrap_or_default() {
            if let Ok(p) = <&mut UProbe>::try_from(self.ebpf.program_mut(prog).expect("loaded")) {
                if let Ok(link) = p.take_link(link) {
                    self.closing.push(std::thread::spawn(move || drop(link)));
                }
            }
        }
        self.attached.retain(|(p, _, _)| *p != pid);
        self.loaders.retain(|(p, _, _)| *p != pid);
    }

    /// Waits until every probe let go of is gone.
    pub fn finish_detaching(&mut self) {
        for h in self.closing.drain(..) {
            let _ = h.join();
        }
    }

    /// Times each eBPF program ran (probe hits) and its total run time, by
    /// program name. Counted only while BPF stats are enabled (see
    /// `enable_run_stats`).
    pub fn program_runs(&self) -> Vec<(&'static str, u64, Duration)> {
        PROGRAMS
            .iter()
            .filter_map(|name| {
                let info = self.ebpf.program(name)?.info().ok()?;
                Some((*name, info.run_count(), info.run_time()))
            })
            .collect()
    }

    /// Kernel-side counters (see dbtel_common::counter), summed over CPUs.
    pub fn kernel_counters(&self) -> [u64; counter::COUNT as usize] {
        let mut out = [0u64; counter::COUNT as usize];
        if let Some(m) = self.ebpf.map("COUNTERS") {
            if let Ok(arr) = PerCpuArray::<_, u64>::try_from(m) {
                for (i, slot) in out.iter_mut().enumerate() {
                    if let Ok(v) = arr.get(&(i as u32), 0) {
                        *slot = v.iter().sum();
                    }
                }
            }
        }
        out
    }
}

/// Turns on the kernel's per-program run counters (a small cost on every
/// probe hit) until the returned fd is dropped. For benchmarks.
pub fn enable_run_stats() -> Result<OwnedFd, AttachError> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| AttachError::Stats(e.to_string()))
}

/// Test hook: how many of the MySQL client programs' entry-to-return slots
/// are used (a power of two up to 8192, the default: dbtel-ebpf's
/// CALL_SLOTS). 1 has every thread share one slot, so that the tests run the
/// fallback kept for two threads meeting in a slot.
const CALL_SLOTS_VAR: &str = "DBTEL_TEST_MYSQL_CALL_SLOTS";

fn mysql_call_slots(v: Option<&str>) -> u32 {
    v.and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|n| n.is_power_of_two() && *n <= 8192)
        .unwrap_or(8192)
}

#[cfg(test)]
mod tests {
    #[test]
    fn call_slots_are_a_power_of_two_up_to_the_array() {
        use super::mysql_call_slots as slots;
        assert_eq!(slots(None), 8192);
        assert_eq!(slots(Some("1")), 1);
        assert_eq!(slots(Some(" 64 ")), 64);
        for bad in ["0", "3", "16384", "x"] {
            assert_eq!(slots(Some(bad)), 8192, "{bad}");
        }
    }
}
