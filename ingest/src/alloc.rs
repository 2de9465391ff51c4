//! Memory settings for the processes that serve requests (`tollgate` and
//! the benches, which use mimalloc as their global allocator).
//!
//! **No transparent huge pages.** mimalloc gives memory it freed back to the
//! kernel 10 ms later, and the next allocation there faults it in again,
//! zeroed by the kernel. mimalloc asks for huge pages, so each such fault
//! zeroed two MiB: the projection consumer builds one large batch a second
//! and the request path's buffers come and go, so the same memory went back
//! and forth all the time. `proxy-bench 5 16`, JSON row, 3 s of
//! `perf stat -e page-faults`: 3,398 faults, and a profile put the kernel's
//! page zeroing (`clear_page_erms` under `do_huge_pmd_anonymous_page`) at
//! 26 % of the projection thread and 2.6 % of the HTTP threads. Without huge
//! pages: 13,302 faults of 4 KiB each, about 50 MB zeroed instead of
//! gigabytes.
//!
//! The setting is inherited by child processes, across `exec`: the private
//! nats-server and PostgreSQL that `tollgate up` (and the benches) start run
//! without transparent huge pages too, as they are often advised to.
//! (Keeping freed memory longer would save the faults too, but mimalloc's
//! option for it is reachable only through `unsafe` code, which this
//! workspace forbids; mimalloc's own `MIMALLOC_ALLOW_THP=0` does what this
//! does.)

/// Turns transparent huge pages off for this process (`prctl(PR_SET_THP_DISABLE)`,
/// which mimalloc's `MIMALLOC_ALLOW_THP=0` also uses). Call first thing in
/// `main`: memory mapped before keeps what it has. Returns whether they are off.
pub fn no_huge_pages() -> bool {
    match rustix::thread::disable_transparent_huge_pages(true) {
        Ok(()) => true,
        Err(e) => {
            // An old or restricted kernel: everything works, a little slower.
            tracing::debug!(error = %e, "could not turn transparent huge pages off");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_pages_are_off_after_it() {
        assert!(no_huge_pages());
        assert!(rustix::thread::transparent_huge_pages_are_disabled().unwrap_or(false));
    }
}
