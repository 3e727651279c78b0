//! The seccomp filter of sandboxed Bun processes: a classic-BPF program built here,
//! which bubblewrap installs (`--seccomp FD`) right before it execs Bun, after its own
//! setup (so its mounts are not affected).
//!
//! A deny list, not an allow list. It refuses with `EPERM` what container runtimes refuse
//! by default and a little more: new namespaces (`unshare`, `setns`, `clone` with a
//! `CLONE_NEW*` flag), other processes' memory and descriptors (`ptrace`,
//! `process_vm_*`, `pidfd_getfd`, `kcmp`), every mount API, modules, kexec, keyrings,
//! `bpf`, `perf_event_open`, `userfaultfd`, clocks, swap, reboot, I/O ports and legacy
//! calls. `io_uring_*` and `clone3` get `ENOSYS`, so that Bun and libc fall back (to
//! plain I/O, and to `clone`, whose flags, unlike `clone3`'s, a filter can read). A call
//! of another architecture (32-bit `int 0x80`) or of the x32 ABI kills the process.
//! This module must not decide anything else about the sandbox: `launcher` does.

/// One instruction: `struct sock_filter`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

impl Insn {
    const fn stmt(code: u16, k: u32) -> Self {
        Self {
            code,
            jt: 0,
            jf: 0,
            k,
        }
    }

    const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Self {
        Self { code, jt, jf, k }
    }
}

/// `BPF_LD | BPF_W | BPF_ABS`: loads 32 bits of `struct seccomp_data`.
const LD: u16 = 0x20;
/// `BPF_JMP | BPF_JEQ | BPF_K`.
const JEQ: u16 = 0x15;
/// `BPF_JMP | BPF_JGE | BPF_K`.
const JGE: u16 = 0x35;
/// `BPF_JMP | BPF_JSET | BPF_K`.
const JSET: u16 = 0x45;
/// `BPF_RET | BPF_K`.
const RET: u16 = 0x06;

/// Offsets in `struct seccomp_data`.
const NR: u32 = 0;
const ARCH: u32 = 4;
/// The low half of `args[0]` (a u64 at 16).
const ARG0_LOW: u32 = if cfg!(target_endian = "little") {
    16
} else {
    20
};

const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

const EPERM: u32 = 1;
/// The same on x86_64 and aarch64.
const ENOSYS: u32 = 38;

/// `CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET`.
/// (`CLONE_NEWTIME`, 0x80, lies in `clone`'s exit-signal byte, where it is invalid.)
const CLONE_NEW_MASK: u32 =
    0x0002_0000 | 0x0200_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000;

/// A system call's number and name.
type Call = (u32, &'static str);

/// Numbers shared by all architectures (from 403 on, the tables are unified).
const SHARED_DENIED: &[Call] = &[
    (428, "open_tree"),
    (429, "move_mount"),
    (430, "fsopen"),
    (431, "fsconfig"),
    (432, "fsmount"),
    (433, "fspick"),
    (438, "pidfd_getfd"),
    (442, "mount_setattr"),
    (443, "quotactl_fd"),
    (467, "open_tree_attr"),
];

/// Answered `ENOSYS`, so that callers fall back.
const ABSENT: &[Call] = &[
    (425, "io_uring_setup"),
    (426, "io_uring_enter"),
    (427, "io_uring_register"),
    (435, "clone3"),
];

#[cfg(target_arch = "x86_64")]
mod table {
    use super::Call;

    pub const AUDIT_ARCH: u32 = 0xc000_003e;
    /// Set in the numbers of the x32 ABI's calls.
    pub const X32_BIT: Option<u32> = Some(0x4000_0000);
    pub const CLONE: u32 = 56;
    pub const DENIED: &[Call] = &[
        (101, "ptrace"),
        (103, "syslog"),
        (134, "uselib"),
        (136, "ustat"),
        (139, "sysfs"),
        (153, "vhangup"),
        (154, "modify_ldt"),
        (155, "pivot_root"),
        (156, "_sysctl"),
        (159, "adjtimex"),
        (161, "chroot"),
        (163, "acct"),
        (164, "settimeofday"),
        (165, "mount"),
        (166, "umount2"),
        (167, "swapon"),
        (168, "swapoff"),
        (169, "reboot"),
        (172, "iopl"),
        (173, "ioperm"),
        (174, "create_module"),
        (175, "init_module"),
        (176, "delete_module"),
        (177, "get_kernel_syms"),
        (178, "query_module"),
        (179, "quotactl"),
        (180, "nfsservctl"),
        (212, "lookup_dcookie"),
        (227, "clock_settime"),
        (246, "kexec_load"),
        (248, "add_key"),
        (249, "request_key"),
        (250, "keyctl"),
        (256, "migrate_pages"),
        (272, "unshare"),
        (279, "move_pages"),
        (298, "perf_event_open"),
        (300, "fanotify_init"),
        (303, "name_to_handle_at"),
        (304, "open_by_handle_at"),
        (305, "clock_adjtime"),
        (308, "setns"),
        (310, "process_vm_readv"),
        (311, "process_vm_writev"),
        (312, "kcmp"),
        (313, "finit_module"),
        (320, "kexec_file_load"),
        (321, "bpf"),
        (323, "userfaultfd"),
    ];
}

#[cfg(target_arch = "aarch64")]
mod table {
    use super::Call;

    pub const AUDIT_ARCH: u32 = 0xc000_00b7;
    pub const X32_BIT: Option<u32> = None;
    pub const CLONE: u32 = 220;
    /// No legacy calls here (`iopl`, `uselib`, `_sysctl`...): the table lacks them.
    pub const DENIED: &[Call] = &[
        (18, "lookup_dcookie"),
        (39, "umount2"),
        (40, "mount"),
        (41, "pivot_root"),
        (42, "nfsservctl"),
        (51, "chroot"),
        (58, "vhangup"),
        (60, "quotactl"),
        (89, "acct"),
        (97, "unshare"),
        (104, "kexec_load"),
        (105, "init_module"),
        (106, "delete_module"),
        (112, "clock_settime"),
        (116, "syslog"),
        (117, "ptrace"),
        (142, "reboot"),
        (170, "settimeofday"),
        (171, "adjtimex"),
        (217, "add_key"),
        (218, "request_key"),
        (219, "keyctl"),
        (224, "swapon"),
        (225, "swapoff"),
        (238, "migrate_pages"),
        (239, "move_pages"),
        (241, "perf_event_open"),
        (262, "fanotify_init"),
        (264, "name_to_handle_at"),
        (265, "open_by_handle_at"),
        (266, "clock_adjtime"),
        (268, "setns"),
        (270, "process_vm_readv"),
        (271, "process_vm_writev"),
        (272, "kcmp"),
        (273, "finit_module"),
        (280, "bpf"),
        (282, "userfaultfd"),
        (294, "kexec_file_load"),
    ];
}

/// The filter for this architecture, or `None` where there is no table.
pub fn program() -> Option<Vec<Insn>> {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        Some(build(
            table::AUDIT_ARCH,
            table::X32_BIT,
            table::CLONE,
            &[table::DENIED, SHARED_DENIED],
        ))
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        None
    }
}

/// Checks the architecture (and the x32 bit), refuses each call of `denied` and
/// [`ABSENT`], then `clone` with a namespace flag; allows the rest. One comparison per
/// call: the list is short, and calls numbered below all of them (most of Bun's hot
/// ones on x86_64: read, write, mmap, poll...) are allowed after one.
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
fn build(arch: u32, x32_bit: Option<u32>, clone: u32, denied: &[&[Call]]) -> Vec<Insn> {
    let refused: Vec<(u32, u32)> = denied
        .iter()
        .flat_map(|t| t.iter())
        .map(|&(nr, _)| (nr, EPERM))
        .chain(ABSENT.iter().map(|&(nr, _)| (nr, ENOSYS)))
        .collect();
    let lowest = refused
        .iter()
        .map(|&(nr, _)| nr)
        .chain([clone])
        .min()
        .unwrap_or(clone);
    let mut p = vec![
        Insn::stmt(LD, ARCH),
        Insn::jump(JEQ, arch, 1, 0),
        Insn::stmt(RET, RET_KILL_PROCESS),
        Insn::stmt(LD, NR),
    ];
    if let Some(bit) = x32_bit {
        p.push(Insn::jump(JGE, bit, 0, 1));
        p.push(Insn::stmt(RET, RET_KILL_PROCESS));
    }
    p.push(Insn::jump(JGE, lowest, 1, 0));
    p.push(Insn::stmt(RET, RET_ALLOW));
    for (nr, errno) in refused {
        p.push(Insn::jump(JEQ, nr, 0, 1));
        p.push(Insn::stmt(RET, RET_ERRNO | errno));
    }
    p.extend([
        Insn::jump(JEQ, clone, 0, 3),
        Insn::stmt(LD, ARG0_LOW),
        Insn::jump(JSET, CLONE_NEW_MASK, 0, 1),
        Insn::stmt(RET, RET_ERRNO | EPERM),
        Insn::stmt(RET, RET_ALLOW),
    ]);
    p
}

/// The program as bwrap reads it: `struct sock_filter`s in native byte order.
pub fn to_bytes(program: &[Insn]) -> Vec<u8> {
    let mut out = Vec::with_capacity(program.len() * 8);
    for i in program {
        out.extend_from_slice(&i.code.to_ne_bytes());
        out.extend_from_slice(&[i.jt, i.jf]);
        out.extend_from_slice(&i.k.to_ne_bytes());
    }
    out
}

/// A sealed memory file holding `bytes`, its offset at the start, for one bwrap to read.
/// Sealed, so that nothing holding it (a child that inherited it) can change the filter;
/// its own open file description, so that no other reader moves its offset. Close-on-exec
/// stays set: `Launch::spawn` clears it just for its spawn.
#[cfg(target_os = "linux")]
pub fn sealed_file(bytes: &[u8]) -> std::io::Result<std::fs::File> {
    use rustix::fs::{MemfdFlags, SealFlags};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let fd = rustix::fs::memfd_create(
        "reactor-seccomp",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    // Never 0-2 (a worker started with those closed): the child's stdio replaces them.
    let fd = if fd.as_raw_fd() < 3 {
        rustix::io::fcntl_dupfd_cloexec(&fd, 3)?
    } else {
        fd
    };
    let file = std::fs::File::from(fd);
    // Positional: the offset stays at 0, where bwrap starts reading.
    file.write_all_at(bytes, 0)?;
    rustix::fs::fcntl_add_seals(
        &file,
        SealFlags::SEAL | SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE,
    )?;
    Ok(file)
}

#[cfg(not(target_os = "linux"))]
pub fn sealed_file(_bytes: &[u8]) -> std::io::Result<std::fs::File> {
    Err(std::io::Error::other("a seccomp filter needs Linux"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the kernel would do with one call: the action `program` returns.
    fn run(program: &[Insn], arch: u32, nr: u32, arg0: u64) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        data[16..24].copy_from_slice(&arg0.to_ne_bytes());
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let i = program[pc];
            pc += 1;
            let taken = match i.code {
                LD => {
                    let at = i.k as usize;
                    let word: [u8; 4] = data[at..at + 4].try_into().expect("4 bytes");
                    a = u32::from_ne_bytes(word);
                    continue;
                }
                RET => return i.k,
                JEQ => a == i.k,
                JGE => a >= i.k,
                JSET => a & i.k != 0,
                other => panic!("unexpected opcode {other:#x}"),
            };
            pc += usize::from(if taken { i.jt } else { i.jf });
        }
    }

    /// Most instructions bubblewrap and the kernel accept (`BPF_MAXINSNS`).
    const MAX_INSNS: usize = 4096;

    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn program_here() -> Vec<Insn> {
        program().expect("a filter for this architecture")
    }

    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn nr(name: &str) -> u32 {
        table::DENIED
            .iter()
            .chain(SHARED_DENIED)
            .chain(ABSENT)
            .find(|(_, n)| *n == name)
            .map(|(nr, _)| *nr)
            .unwrap_or_else(|| panic!("{name} is not in the tables"))
    }

    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[test]
    fn the_program_checks_the_architecture_first_and_allows_by_default() {
        let p = program_here();
        assert_eq!(
            p[0],
            Insn::stmt(LD, ARCH),
            "the first instruction loads arch"
        );
        assert_eq!(p[1].k, table::AUDIT_ARCH);
        assert_eq!(p[2], Insn::stmt(RET, RET_KILL_PROCESS));
        assert_eq!(p.last(), Some(&Insn::stmt(RET, RET_ALLOW)));
        assert!(p.len() < MAX_INSNS, "{} instructions", p.len());
        // Every jump lands inside the program.
        for (at, i) in p.iter().enumerate() {
            if i.code != LD && i.code != RET {
                let far = at + 1 + usize::from(i.jt.max(i.jf));
                assert!(far < p.len(), "instruction {at} jumps out");
            }
        }
        assert_eq!(to_bytes(&p).len(), p.len() * 8);
    }

    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[test]
    fn the_program_refuses_namespaces_and_kernel_interfaces_and_allows_threads() {
        let p = program_here();
        let arch = table::AUDIT_ARCH;
        let eperm = RET_ERRNO | EPERM;
        let enosys = RET_ERRNO | ENOSYS;
        for name in [
            "unshare", "setns", "ptrace", "mount", "bpf", "keyctl", "fsopen",
        ] {
            assert_eq!(run(&p, arch, nr(name), 0), eperm, "{name}");
        }
        for &(n, name) in table::DENIED.iter().chain(SHARED_DENIED) {
            assert_eq!(run(&p, arch, n, 0), eperm, "{name}");
        }
        for name in ["io_uring_setup", "io_uring_enter", "clone3"] {
            assert_eq!(run(&p, arch, nr(name), 0), enosys, "{name}");
        }
        let clone = table::CLONE;
        // CLONE_NEWUSER, and a high half that must not hide it.
        assert_eq!(run(&p, arch, clone, 0x1000_0000), eperm);
        assert_eq!(run(&p, arch, clone, 0xffff_0000_1000_0000), eperm);
        assert_eq!(run(&p, arch, clone, 0x0002_0011), eperm, "CLONE_NEWNS");
        // A thread: CLONE_VM | FS | FILES | SIGHAND | THREAD | SYSVSEM | SETTLS |
        // PARENT_SETTID | CHILD_CLEARTID; and fork (SIGCHLD).
        assert_eq!(run(&p, arch, clone, 0x003d_0f00), RET_ALLOW);
        assert_eq!(run(&p, arch, clone, 17), RET_ALLOW);
        // Calls in neither list (read and write on x86_64, read and futex on aarch64;
        // epoll_pwait2), and one from the future.
        for n in [0, 1, 63, 98, 202, 441, 999] {
            assert_eq!(run(&p, arch, n, 0), RET_ALLOW, "call {n}");
        }
        // Another architecture's calls (i386 through int 0x80) kill the process.
        assert_eq!(run(&p, 0x4000_0003, 1, 0), RET_KILL_PROCESS);
        if let Some(bit) = table::X32_BIT {
            assert_eq!(run(&p, arch, bit | 1, 0), RET_KILL_PROCESS, "x32");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_sealed_file_holds_the_bytes_from_its_start_and_refuses_writes() {
        use std::io::{Read, Write};
        let bytes = to_bytes(&[Insn::stmt(RET, RET_ALLOW)]);
        let mut file = sealed_file(&bytes).expect("a sealed memfd");
        assert!(file.write_all(b"more").is_err(), "sealed against writes");
        let mut read = Vec::new();
        file.read_to_end(&mut read).expect("reading it back");
        assert_eq!(read, bytes);
    }
}
