//! The `ferry` binary: all logic lives in the library; this only hands over argv (and
//! picks the allocator: sealing and applying bundles allocate and free millions of
//! small values, which mimalloc does several times faster than the system's).
//!
//! Transparent huge pages stay off: mimalloc is built without asking for them
//! (`no_thp`), and the process turns them off before anything large is allocated
//! (where the kernel gives them to every program). With them, every first touch of a
//! 2 MiB region zeroed all of it: ferry's memory is short-lived and sparse, so that
//! cost export and import a fifth of their time (`make bench`, 2026-12-03: export
//! 0.72 s → 0.56 s and import 8.8 s → 7.0 s at 100k changes) and gained nothing
//! measurable back. mimalloc's own request (`madvise(MADV_HUGEPAGE)` over the 1 GiB it
//! reserves, before `main`) also cost each command about 15 ms of start-up.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // SAFETY: prctl(PR_SET_THP_DISABLE) takes plain integers and only sets a flag on
    // this process; it cannot fail in a way that matters (older kernels ignore it).
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    let code = ferry::cli::main();
    // Leave without running exit handlers: mimalloc's, linked in statically, walks and
    // returns every page it holds (28 ms after a 1M-change export, a tenth of a
    // 100k-change export's time beyond its work). Everything ferry writes is flushed
    // and synced before this point; the standard streams are flushed here.
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit(2) ends the process at once; nothing of it runs afterwards.
    unsafe { libc::_exit(code) }
}
