//! Reading the guest console: kernel oracles (panic, BUG, oops, WARN) and the tail
//! kept for reports. Console text is untrusted; it is only pattern-matched.

use std::collections::VecDeque;

/// Lines that start a kernel report worth quoting.
const REPORT_STARTS: [&str; 8] = [
    "------------[ cut here ]------------",
    "kernel BUG at",
    "BUG: ",
    "WARNING: CPU:",
    "Oops: ",
    "general protection fault",
    "Kernel panic - not syncing",
    "BUG: KASAN:",
];

/// What the kernel said about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelReport {
    /// The report's first line, e.g. "kernel BUG at include/linux/swapops.h:505!".
    pub headline: String,
    /// Whether the kernel panicked (it then reboots: `panic=-1`).
    pub panicked: bool,
    /// The report's lines, bounded.
    pub lines: Vec<String>,
    /// First lines of the reports that followed (a KASAN report after a WARN), bounded.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub further: Vec<String>,
}

impl KernelReport {
    /// The first line of this report, or of a later one, that contains `pattern`.
    pub fn line_mentioning(&self, pattern: &str) -> Option<&str> {
        std::iter::once(&self.headline)
            .chain(&self.lines)
            .chain(&self.further)
            .find(|l| l.contains(pattern))
            .map(|l| ConsoleWatch::body(l))
    }
}

/// Keeps the console tail and spots kernel reports.
#[derive(Debug)]
pub struct ConsoleWatch {
    tail: VecDeque<String>,
    keep: usize,
    report: Option<KernelReport>,
}

const MAX_REPORT_LINES: usize = 80;
const MAX_FURTHER_REPORTS: usize = 16;
/// Lines stored are cut to this many characters: a guest cannot exhaust our memory.
const MAX_LINE_CHARS: usize = 512;

impl ConsoleWatch {
    pub fn new(keep: usize) -> ConsoleWatch {
        ConsoleWatch {
            tail: VecDeque::new(),
            keep,
            report: None,
        }
    }

    /// Strip the `[    1.234567] ` timestamp, if any.
    fn body(line: &str) -> &str {
        match (line.starts_with('['), line.find("] ")) {
            (true, Some(i)) => &line[i + 2..],
            _ => line,
        }
    }

    pub fn push(&mut self, line: &str) {
        let line: String = line.chars().take(MAX_LINE_CHARS).collect();
        let body = Self::body(&line);
        let start = REPORT_STARTS.iter().find(|s| body.contains(*s));
        match &mut self.report {
            None => {
                if let Some(start) = start {
                    let headline = if *start == REPORT_STARTS[0] {
                        String::new()
                    } else {
                        body.to_string()
                    };
                    self.report = Some(KernelReport {
                        headline,
                        panicked: body.contains("Kernel panic - not syncing"),
                        lines: vec![line.clone()],
                        further: Vec::new(),
                    });
                }
            }
            Some(r) => {
                if r.headline.is_empty() && !body.is_empty() {
                    r.headline = body.to_string();
                }
                if body.contains("Kernel panic - not syncing") {
                    r.panicked = true;
                }
                if r.lines.len() < MAX_REPORT_LINES {
                    r.lines.push(line.clone());
                } else if start.is_some_and(|s| *s != REPORT_STARTS[0])
                    && r.further.len() < MAX_FURTHER_REPORTS
                {
                    r.further.push(line.clone());
                }
            }
        }
        self.tail.push_back(line);
        while self.tail.len() > self.keep {
            self.tail.pop_front();
        }
    }

    pub fn report(&self) -> Option<&KernelReport> {
        self.report.as_ref()
    }

    pub fn tail(&self) -> Vec<String> {
        self.tail.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spots_a_bug_and_the_panic_that_follows() {
        let mut w = ConsoleWatch::new(3);
        for l in [
            "[    0.1] Run /init as init process",
            "[    1.0] ------------[ cut here ]------------",
            "[    1.0] kernel BUG at include/linux/swapops.h:505!",
            "[    1.0] Oops: invalid opcode: 0000 [#1] SMP",
            "[    1.1] Kernel panic - not syncing: Fatal exception",
        ] {
            w.push(l);
        }
        let r = w.report().unwrap();
        assert_eq!(r.headline, "kernel BUG at include/linux/swapops.h:505!");
        assert!(r.panicked);
        assert_eq!(r.lines.len(), 4);
        assert_eq!(w.tail().len(), 3);
    }

    #[test]
    fn a_later_report_is_still_seen() {
        let mut w = ConsoleWatch::new(3);
        w.push("[    1.0] WARNING: CPU: 0 PID: 40 at mm/rmap.c:473 unlink_anon_vmas+0x1/0x2");
        for i in 0..MAX_REPORT_LINES {
            w.push(&format!("[    1.1] trace line {i}"));
        }
        w.push("[    2.0] BUG: KASAN: slab-use-after-free in unlink_anon_vmas+0x3/0x4");
        let r = w.report().unwrap();
        assert!(r.headline.starts_with("WARNING: CPU: 0"));
        assert!(r
            .line_mentioning("at mm/rmap.c:473 unlink_anon_vmas")
            .is_some());
        assert_eq!(
            r.line_mentioning("BUG: KASAN: slab-use-after-free"),
            Some("BUG: KASAN: slab-use-after-free in unlink_anon_vmas+0x3/0x4")
        );
        assert!(r.line_mentioning("kernel BUG at").is_none());
    }

    #[test]
    fn a_quiet_boot_has_no_report() {
        let mut w = ConsoleWatch::new(10);
        w.push("[    0.0] Linux version 6.12.117");
        w.push("random text with BUGS in it");
        assert!(w.report().is_none());
    }

    #[test]
    fn bounds_stored_lines() {
        let mut w = ConsoleWatch::new(2);
        w.push(&"x".repeat(100_000));
        assert_eq!(w.tail()[0].len(), MAX_LINE_CHARS);
    }
}
