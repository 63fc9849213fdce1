//! Guest RAM backends.
