//! Example trio_pgdog plugin in Rust, with no external crates: the same behaviour as
//! `examples/plugins/c/plugin.c`.
//!
//! - A statement containing `DROP TABLE` (any case, any spacing) is blocked with SQLSTATE
//!   42501 (insufficient_privilege).
//! - A statement carrying a `/* shard: N */` comment goes to shard N (`PGDOG_FORWARD`); a shard
//!   the database does not have is blocked with 22023.
//! - Anything else: no decision (the proxy's router decides).
//!
//! Build: `cargo build --offline --release` (gives `target/release/libshard_comment.so`).
//!
//! The `#[repr(C)]` types below mirror `hooks/include/pgdog_plugin.h` (plugin ABI version 1)
//! field by field; keep them in step with the header.

#![allow(dead_code)]

use std::cell::RefCell;
use std::os::raw::c_char;
use std::ptr;

// --- the ABI (hooks/include/pgdog_plugin.h) ------------------------------------------------

pub const PGDOG_PLUGIN_ABI_VERSION: u32 = 1;

pub const PGDOG_NO_DECISION: i32 = 0;
pub const PGDOG_FORWARD: i32 = 1;
pub const PGDOG_BLOCK: i32 = 2;
pub const PGDOG_INTERCEPT: i32 = 3;
pub const PGDOG_REWRITE: i32 = 4;

pub const PGDOG_SHARD_UNKNOWN: i32 = -2;
pub const PGDOG_SHARD_ALL: i32 = -1;

pub const PGDOG_ROLE_UNKNOWN: i32 = 0;
pub const PGDOG_ROLE_PRIMARY: i32 = 1;
pub const PGDOG_ROLE_REPLICA: i32 = 2;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct PgdogStr {
    pub data: *const c_char,
    pub len: usize,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct PgdogParameter {
    pub data: *const c_char,
    pub len: i32, // -1 is NULL
    pub format: i16, // 0 text, 1 binary
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct PgdogInput {
    pub query: PgdogStr,
    pub num_parameters: u32,
    pub parameters: *const PgdogParameter,
    pub database: PgdogStr,
    pub user: PgdogStr,
    pub shards: u32,
    pub has_primary: u8,
    pub has_replicas: u8,
    pub in_transaction: u8,
    pub ast_json: PgdogStr,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct PgdogColumn {
    pub name: PgdogStr,
    pub type_oid: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct PgdogError {
    pub sqlstate: [c_char; 6],
    pub message: PgdogStr,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct PgdogIntercept {
    pub num_columns: u32,
    pub columns: *const PgdogColumn,
    pub num_rows: u32,
    pub cells: *const PgdogStr,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct PgdogOutput {
    pub decision: i32,
    pub shard: i32,
    pub role: i32,
    pub error: PgdogError,
    pub intercept: PgdogIntercept,
    pub rewrite: PgdogStr,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct PgdogConnect {
    pub user: PgdogStr,
    pub database: PgdogStr,
    pub application_name: PgdogStr,
    pub client_addr: PgdogStr,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct PgdogServer {
    pub database: PgdogStr,
    pub host: PgdogStr,
    pub port: u16,
    pub role: i32,
    pub shard: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct PgdogQueryDone {
    pub query: PgdogStr,
    pub database: PgdogStr,
    pub user: PgdogStr,
    pub duration_us: u64,
    pub rows: u64,
    pub sqlstate: [c_char; 6],
    pub shard: i32,
    pub role: i32,
}

impl PgdogStr {
    pub const EMPTY: PgdogStr = PgdogStr { data: ptr::null(), len: 0 };

    /// A string the plugin owns for good.
    pub fn from_static(s: &'static str) -> PgdogStr {
        PgdogStr { data: s.as_ptr() as *const c_char, len: s.len() }
    }

    /// The bytes of a string the proxy passed: valid during the call only.
    ///
    /// # Safety
    /// `data` must point to `len` readable bytes (or be NULL with `len` 0), as the proxy
    /// guarantees for its inputs.
    pub unsafe fn as_bytes<'a>(&self) -> &'a [u8] {
        if self.data.is_null() || self.len == 0 {
            &[]
        } else {
            std::slice::from_raw_parts(self.data as *const u8, self.len)
        }
    }
}

impl PgdogOutput {
    /// No decision, no shard, no role (PGDOG_OUTPUT_INIT in C).
    pub fn none() -> PgdogOutput {
        PgdogOutput {
            decision: PGDOG_NO_DECISION,
            shard: PGDOG_SHARD_UNKNOWN,
            role: PGDOG_ROLE_UNKNOWN,
            error: PgdogError { sqlstate: [0; 6], message: PgdogStr::EMPTY },
            intercept: PgdogIntercept {
                num_columns: 0,
                columns: ptr::null(),
                num_rows: 0,
                cells: ptr::null(),
            },
            rewrite: PgdogStr::EMPTY,
        }
    }

    /// PGDOG_BLOCK with `sqlstate` (five characters) and `message` (which must stay valid
    /// until the plugin's next call).
    pub fn block(sqlstate: &[u8; 5], message: PgdogStr) -> PgdogOutput {
        let mut out = PgdogOutput::none();
        out.decision = PGDOG_BLOCK;
        for (i, b) in sqlstate.iter().enumerate() {
            out.error.sqlstate[i] = *b as c_char;
        }
        out.error.message = message;
        out
    }
}

// --- the plugin ---------------------------------------------------------------------------

thread_local! {
    // The last block message built at run time: the proxy copies it before calling again,
    // and it calls from one thread only.
    static MESSAGE: RefCell<String> = RefCell::new(String::new());
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$'
}

fn word_at(q: &[u8], i: usize, word: &[u8]) -> bool {
    q.len() >= i + word.len() && q[i..i + word.len()].eq_ignore_ascii_case(word)
}

/// DROP, whitespace, TABLE, as whole words, anywhere in the text.
fn has_drop_table(q: &[u8]) -> bool {
    (0..q.len()).any(|i| {
        if !word_at(q, i, b"drop") || (i > 0 && is_word_byte(q[i - 1])) {
            return false;
        }
        let mut j = i + 4;
        if j >= q.len() || !q[j].is_ascii_whitespace() {
            return false;
        }
        while j < q.len() && q[j].is_ascii_whitespace() {
            j += 1;
        }
        word_at(q, j, b"table") && (j + 5 == q.len() || !is_word_byte(q[j + 5]))
    })
}

/// The N of the first `/* shard: N */` comment.
fn shard_comment(q: &[u8]) -> Option<u64> {
    let skip_ws = |mut j: usize| {
        while j < q.len() && q[j].is_ascii_whitespace() {
            j += 1;
        }
        j
    };
    for i in 0..q.len().saturating_sub(1) {
        if &q[i..i + 2] != b"/*" {
            continue;
        }
        let mut j = skip_ws(i + 2);
        if !word_at(q, j, b"shard") {
            continue;
        }
        j = skip_ws(j + 5);
        if j >= q.len() || q[j] != b':' {
            continue;
        }
        j = skip_ws(j + 1);
        let start = j;
        let mut n: u64 = 0;
        while j < q.len() && q[j].is_ascii_digit() && n < 1_000_000 {
            n = n * 10 + u64::from(q[j] - b'0');
            j += 1;
        }
        if j == start {
            continue;
        }
        j = skip_ws(j);
        if j + 1 < q.len() && &q[j..j + 2] == b"*/" {
            return Some(n);
        }
    }
    None
}

#[no_mangle]
pub extern "C" fn pgdog_plugin_abi_version() -> u32 {
    PGDOG_PLUGIN_ABI_VERSION
}

#[no_mangle]
pub extern "C" fn pgdog_route_query(input: PgdogInput) -> PgdogOutput {
    // SAFETY: the proxy passes `len` valid bytes, alive for the duration of this call.
    let query = unsafe { input.query.as_bytes() };
    if has_drop_table(query) {
        return PgdogOutput::block(
            b"42501",
            PgdogStr::from_static("DROP TABLE is not allowed through this proxy"),
        );
    }
    let Some(shard) = shard_comment(query) else {
        return PgdogOutput::none();
    };
    if shard >= u64::from(input.shards) {
        let message = MESSAGE.with(|m| {
            let mut m = m.borrow_mut();
            *m = format!("shard {} does not exist (the database has {})", shard, input.shards);
            PgdogStr { data: m.as_ptr() as *const c_char, len: m.len() }
        });
        return PgdogOutput::block(b"22023", message);
    }
    let mut out = PgdogOutput::none();
    out.decision = PGDOG_FORWARD;
    out.shard = shard as i32;
    out
}
