//! Reusable scratch buffers for the CPU kernels.
//!
//! A fresh large allocation is mapped by the allocator page by page, and every page then faults
//! and is zeroed by the kernel on first touch. On the virtual machines we measure on that costs
//! a few microseconds per 4 KiB page: for a small layer, more than its arithmetic. The kernels'
//! large temporaries (packed weights, Winograd transforms) are therefore taken from a small pool
//! and given back when dropped, so a network's forward pass maps them once.
use std::ops::{Deref, DerefMut};
use std::sync::{Mutex, PoisonError};

/// Buffers kept for reuse; the smallest are freed when the pool would hold more, or more than
/// `KEEP_FLOATS` values (256 MiB) in all, so that a large input does not pin its temporaries.
const KEEP: usize = 8;
const KEEP_FLOATS: usize = 64 << 20;

static POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// Frees every pooled buffer: between jobs, so that memory figures show what is held, and the
/// next job (perhaps another model, another size) maps what it needs.
pub fn release_pool() {
    let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    pool.clear();
    pool.shrink_to_fit();
}

/// A buffer of f32 values on loan from the pool.
pub(crate) struct Scratch {
    values: Vec<f32>,
}

impl Scratch {
    /// `len` values whose contents are unspecified (whatever an earlier user left, or zeros):
    /// the caller must write every value before it reads it.
    pub(crate) fn take(len: usize) -> Self {
        let reused = {
            let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
            // The smallest buffer that is large enough, else the largest (it grows).
            let fit = pool
                .iter()
                .enumerate()
                .filter(|(_, v)| v.capacity() >= len)
                .min_by_key(|(_, v)| v.capacity())
                .or_else(|| pool.iter().enumerate().max_by_key(|(_, v)| v.capacity()))
                .map(|(i, _)| i);
            fit.map(|i| pool.swap_remove(i))
        };
        let mut values = match reused {
            // Growing would copy the old contents for nothing.
            Some(v) if v.capacity() >= len => v,
            _ => Vec::new(),
        };
        values.truncate(len);
        values.resize(len, 0.0);
        Self { values }
    }
}

impl Deref for Scratch {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        &self.values
    }
}

impl DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.values
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let values = std::mem::take(&mut self.values);
        if values.capacity() == 0 {
            return;
        }
        let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
        pool.push(values);
        while pool.len() > KEEP || pool.iter().map(Vec::capacity).sum::<usize>() > KEEP_FLOATS {
            let Some(smallest) = pool
                .iter()
                .enumerate()
                .min_by_key(|(_, v)| v.capacity())
                .map(|(i, _)| i)
            else {
                break;
            };
            pool.swap_remove(smallest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_with_the_asked_length_and_is_reused() {
        let first = Scratch::take(1000);
        assert_eq!(first.len(), 1000);
        drop(first);
        let second = Scratch::take(10);
        assert_eq!(second.len(), 10);
        let third = Scratch::take(2000);
        assert_eq!(third.len(), 2000);
    }
}
