//! The qemu backend: qemu-system-x86_64 driven over the gdb remote protocol.

#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error(
        "qemu-system-x86_64 not found on PATH; install it with: apt-get install qemu-system-x86"
    )]
    NotInstalled,
}
