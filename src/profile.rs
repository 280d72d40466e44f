//! NVTX ranges around phases and layers, so `nsys` / `ncu` timelines read as the code does
//! ("rollout", "train", "layer 3 attention backward").
//!
//! With the `cuda` feature and `libnvToolsExt` loadable (probed once, never a panic), each
//! range is an NVTX start/end pair: a few hundred nanoseconds without a profiler attached.
//! Without either (or with `CADA_NVTX=0`) a range is an empty guard.

/// Ends its range when dropped.
#[must_use = "the range ends when this guard is dropped"]
pub struct Range {
    #[cfg(feature = "cuda")]
    _inner: Option<cudarc::nvtx::safe::Range>,
}

#[cfg(feature = "cuda")]
fn nvtx_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var("CADA_NVTX").map_or(true, |v| v != "0")
            // SAFETY: only tries to dlopen libnvToolsExt by its usual names.
            && unsafe { cudarc::nvtx::sys::is_culib_present() }
    })
}

/// Opens a named range (closed when the guard drops).
pub fn range(name: &str) -> Range {
    #[cfg(feature = "cuda")]
    {
        Range {
            _inner: nvtx_enabled().then(|| cudarc::nvtx::safe::scoped_range(name)),
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = name;
        Range {}
    }
}

/// Like [`range`], with the name built only when profiling is on (layer loops call this).
pub fn range_with(name: impl FnOnce() -> String) -> Range {
    #[cfg(feature = "cuda")]
    {
        if nvtx_enabled() {
            return range(&name());
        }
        Range { _inner: None }
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = name;
        Range {}
    }
}
