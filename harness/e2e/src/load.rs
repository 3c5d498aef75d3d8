//! Load generation for the overhead benchmark (filled in below).
