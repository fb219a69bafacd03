//! The `debian` profile (being written).

use std::path::Path;

use super::{BuildSpec, GuestError, Profile};
use crate::cache::Cache;
use crate::kernel::Kernel;

pub(crate) const RECIPE: &str = "debian-wip";

pub(crate) fn build(
    _cache: &Cache,
    _out: &Path,
    _kernel: &Kernel,
    _docs: &[(String, Vec<u8>)],
    _progress: &dyn Fn(&str),
) -> Result<BuildSpec, GuestError> {
    Err(GuestError::build(Profile::Debian, "starting", "not written yet"))
}
