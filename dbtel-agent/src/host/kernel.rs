//! The running kernel: its release, and whether dbtel's programs can load.

/// The oldest kernel dbtel's programs load on: BPF ring buffers came in
/// 5.8, attach cookies (one program, many probe points) in 5.15.
pub const OLDEST: (u32, u32) = (5, 15);

/// `uname -r`.
pub fn release() -> String {
    // SAFETY: uname fills the struct we pass.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    unsafe { libc::uname(&mut u) };
    // SAFETY: uname NUL-terminates release.
    unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// (major, minor) of a release string such as `6.1.0-57-amd64`.
pub fn version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Why this kernel cannot run dbtel's programs, naming what it lacks.
pub fn too_old(release: &str) -> Option<String> {
    match version(release) {
        Some(v) if v >= OLDEST => None,
        _ => Some(format!(
            "kernel {release}: dbtel needs Linux {}.{} or later (BPF ring buffer, 5.8; BPF attach cookies, 5.15)",
            OLDEST.0, OLDEST.1
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_kernels_are_named_with_what_they_lack() {
        assert_eq!(version("6.1.0-57-amd64"), Some((6, 1)));
        assert_eq!(version("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(too_old("6.1.0-57-amd64"), None);
        assert_eq!(too_old("5.15.0"), None);
        assert!(too_old("5.10.0-30-amd64")
            .unwrap()
            .contains("attach cookies, 5.15"));
        assert!(too_old("weird").is_some());
    }
}
