//! The command/reply link between the VMM thread and one vCPU thread.
//!
//! Every command carries a sequence number and its reply echoes it. The VMM
//! waits a bounded time for a reply; a vCPU that answers after the VMM gave up
//! leaves that late reply in the channel, where the next wait would find it
//! first. Matching sequence numbers makes the VMM drop such a stale reply
//! instead of taking it as the answer to a newer command.

use std::cell::Cell;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("no reply in time")]
    Timeout,
    #[error("the other end is gone")]
    Closed,
}

/// A connected pair of ends.
pub fn link<C, R>() -> (HostEnd<C, R>, VcpuEnd<C, R>) {
    let (commands, command_rx) = channel();
    let (reply_tx, replies) = channel();
    (
        HostEnd {
            commands,
            replies,
            last_sent: Cell::new(0),
        },
        VcpuEnd {
            commands: command_rx,
            replies: reply_tx,
            answering: 0,
        },
    )
}

/// The VMM's end: one outstanding command at a time.
pub struct HostEnd<C, R> {
    commands: Sender<(u64, C)>,
    replies: Receiver<(u64, R)>,
    /// Sequence number of the last command sent; its reply is the one awaited.
    last_sent: Cell<u64>,
}

impl<C, R> HostEnd<C, R> {
    pub fn send(&self, command: C) -> Result<(), LinkError> {
        let seq = self.last_sent.get() + 1;
        self.commands
            .send((seq, command))
            .map_err(|_| LinkError::Closed)?;
        self.last_sent.set(seq);
        Ok(())
    }

    /// The reply to the last command sent, waiting at most `timeout`; replies to
    /// earlier commands are dropped on the way.
    pub fn reply(&self, timeout: Duration) -> Result<R, LinkError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.replies.recv_timeout(left) {
                Ok((seq, reply)) if seq == self.last_sent.get() => return Ok(reply),
                Ok(_stale) => continue,
                Err(RecvTimeoutError::Timeout) => return Err(LinkError::Timeout),
                Err(RecvTimeoutError::Disconnected) => return Err(LinkError::Closed),
            }
        }
    }
}

/// The vCPU thread's end: answers go to the command received last.
pub struct VcpuEnd<C, R> {
    commands: Receiver<(u64, C)>,
    replies: Sender<(u64, R)>,
    answering: u64,
}

impl<C, R> VcpuEnd<C, R> {
    /// The next command if one is waiting.
    pub fn try_recv(&mut self) -> Result<Option<C>, LinkError> {
        match self.commands.try_recv() {
            Ok((seq, command)) => {
                self.answering = seq;
                Ok(Some(command))
            }
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(LinkError::Closed),
        }
    }

    /// Block until the next command.
    pub fn recv(&mut self) -> Result<C, LinkError> {
        let (seq, command) = self.commands.recv().map_err(|_| LinkError::Closed)?;
        self.answering = seq;
        Ok(command)
    }

    /// Answer the command received last.
    pub fn answer(&self, reply: R) {
        // The VMM side only drops its receiver when tearing the VM down.
        let _ = self.replies.send((self.answering, reply));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_reply_is_not_taken_for_the_next_one() {
        let (host, mut vcpu) = link::<&str, &str>();
        host.send("first").unwrap();
        assert_eq!(vcpu.recv().unwrap(), "first");
        // The VMM gives up before the vCPU answers...
        assert_eq!(
            host.reply(Duration::from_millis(1)),
            Err(LinkError::Timeout)
        );
        vcpu.answer("late answer to first");
        // ...and the next command's wait skips the late answer.
        host.send("second").unwrap();
        assert_eq!(vcpu.recv().unwrap(), "second");
        vcpu.answer("answer to second");
        assert_eq!(host.reply(Duration::from_secs(5)), Ok("answer to second"));
    }

    #[test]
    fn a_gone_vcpu_is_reported() {
        let (host, vcpu) = link::<(), ()>();
        drop(vcpu);
        assert_eq!(host.send(()), Err(LinkError::Closed));
        assert_eq!(host.reply(Duration::from_secs(5)), Err(LinkError::Closed));
    }
}
