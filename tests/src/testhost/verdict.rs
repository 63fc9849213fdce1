//! The expectations of a scenario's checks, collected so that one run reports every failure.

use super::{CheckResult, Report};

#[derive(Default)]
pub struct Verdict(Vec<String>);

impl Verdict {
    /// Records `what` with the check's output when `ok` is false.
    pub fn expect(&mut self, ok: bool, what: &str, r: &CheckResult) {
        if !ok {
            self.0.push(format!("{what}\n{r}"));
        }
    }

    /// The check `name` was refused the way bad input must be: exit status 2 and one line on
    /// stderr that contains `needle`.
    pub fn refused(&mut self, report: &Report, name: &str, needle: &str) {
        let r = report.check(name);
        self.expect(
            r.status == 2 && r.stderr.contains(needle) && r.stderr.trim().lines().count() == 1,
            &format!("{name}: exit 2 with one line naming `{needle}`"),
            r,
        );
    }

    /// The failed expectations so far.
    pub fn failures(&self) -> &[String] {
        &self.0
    }

    /// Panics with every failed expectation, if there is any.
    pub fn assert_passed(self) {
        assert!(
            self.0.is_empty(),
            "{} expectation(s) failed:\n\n{}",
            self.0.len(),
            self.0.join("\n\n")
        );
    }
}
