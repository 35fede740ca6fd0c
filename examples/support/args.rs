//! The examples' command-line parser, written by hand and shared by
//! `batch_agent`, `fleet_agent` and `fleet_baseline` (each includes it with
//! `#[path = "support/args.rs"] mod args;`, with `#[macro_use]` for its
//! `say!` / `say_err!`).
//!
//! Why not clap: the examples are the fixed interfaces of DESIGN.md, run as
//! `cargo run --release --example <name> -- ...` with the default features,
//! and the library's default features carry no CLI framework (wal-inspect,
//! which does use clap, is its own package). The examples need only
//! `--flag VALUE`, `--flag=VALUE`, `--switch`, an optional leading
//! subcommand, `-h/--help` and `-V/--version`.
#![allow(dead_code)] // each example uses a part

use std::io::Write;
use std::str::FromStr;

/// Prints a line on stdout. Output is advisory: a closed pipe
/// (`batch_agent ... | head`) must not stop the agent mid-batch, and
/// `println!` would panic on EPIPE. (Exported by `#[macro_use] mod args;`.)
#[allow(unused_macros)]
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = ::std::io::Write::write_fmt(
            &mut ::std::io::stdout(),
            format_args!("{}\n", format_args!($($arg)*)),
        );
    }};
}

/// Like `say!`, on stderr.
#[allow(unused_macros)]
macro_rules! say_err {
    ($($arg:tt)*) => {{
        let _ = ::std::io::Write::write_fmt(
            &mut ::std::io::stderr(),
            format_args!("{}\n", format_args!($($arg)*)),
        );
    }};
}

/// Why parsing did not produce arguments.
#[derive(Debug, PartialEq)]
pub enum ParseExit {
    /// `-h` / `--help`: print the usage, exit 0.
    Help,
    /// `-V` / `--version`: print the version, exit 0.
    Version,
    /// A mistake: print it and the usage, exit 2.
    Usage(String),
}

/// The flags given after the program name (or after its subcommand).
#[derive(Debug, Default)]
pub struct Flags {
    /// `(flag, value)` in the order given; a repeated flag: the last wins.
    values: Vec<(String, String)>,
    /// Switches given (flags without a value).
    switches: Vec<String>,
}

/// Parses `argv` (without the program name) against the flags that take a
/// value (`valued`) and those that do not (`switches`). Anything else is a
/// usage error naming the argument.
pub fn parse(
    argv: impl IntoIterator<Item = String>,
    valued: &[&str],
    switches: &[&str],
) -> Result<Flags, ParseExit> {
    let mut flags = Flags::default();
    let mut it = argv.into_iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        match flag.as_str() {
            "-h" | "--help" => return Err(ParseExit::Help),
            "-V" | "--version" => return Err(ParseExit::Version),
            _ => {}
        }
        if switches.contains(&flag.as_str()) {
            if inline.is_some() {
                return Err(ParseExit::Usage(format!("{flag} takes no value")));
            }
            flags.switches.push(flag);
        } else if valued.contains(&flag.as_str()) {
            let value = match inline.or_else(|| it.next()) {
                Some(v) => v,
                None => return Err(ParseExit::Usage(format!("{flag} needs a value"))),
            };
            flags.values.push((flag, value));
        } else {
            return Err(ParseExit::Usage(format!("unexpected argument '{arg}'")));
        }
    }
    Ok(flags)
}

/// Splits off a leading subcommand, one of `commands`. `-h` / `-V` before
/// it are answered here.
pub fn subcommand(
    argv: impl IntoIterator<Item = String>,
    commands: &[&str],
) -> Result<(String, Vec<String>), ParseExit> {
    let mut it = argv.into_iter();
    let cmd = match it.next() {
        None => {
            return Err(ParseExit::Usage(format!(
                "a command is required: {}",
                commands.join(", ")
            )))
        }
        Some(c) => c,
    };
    match cmd.as_str() {
        "-h" | "--help" | "help" => Err(ParseExit::Help),
        "-V" | "--version" => Err(ParseExit::Version),
        c if commands.contains(&c) => Ok((cmd, it.collect())),
        _ => Err(ParseExit::Usage(format!(
            "unrecognized command '{cmd}' (expected one of: {})",
            commands.join(", ")
        ))),
    }
}

/// Parses `v`, the value of `flag`, naming both on failure.
pub fn num<T: FromStr>(flag: &str, v: &str) -> Result<T, ParseExit>
where
    T::Err: std::fmt::Display,
{
    v.trim()
        .parse()
        .map_err(|e| ParseExit::Usage(format!("invalid value '{v}' for {flag}: {e}")))
}

impl Flags {
    /// The raw value of `flag` if given (the last one if repeated).
    pub fn raw(&self, flag: &str) -> Option<&str> {
        self.values
            .iter()
            .rev()
            .find(|(f, _)| f == flag)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `flag` parsed as `T`, if given.
    pub fn get<T: FromStr>(&self, flag: &str) -> Result<Option<T>, ParseExit>
    where
        T::Err: std::fmt::Display,
    {
        self.raw(flag).map(|v| num(flag, v)).transpose()
    }

    /// The value of `flag` parsed as `T`, or `default` when not given.
    pub fn get_or<T: FromStr>(&self, flag: &str, default: T) -> Result<T, ParseExit>
    where
        T::Err: std::fmt::Display,
    {
        Ok(self.get(flag)?.unwrap_or(default))
    }

    /// The value of a required flag; `what` names its value in the error
    /// (`--journal DIR is required`).
    pub fn required<T: FromStr>(&self, flag: &str, what: &str) -> Result<T, ParseExit>
    where
        T::Err: std::fmt::Display,
    {
        self.get(flag)?
            .ok_or_else(|| ParseExit::Usage(format!("{flag} {what} is required")))
    }

    /// Whether the switch `flag` was given.
    pub fn switch(&self, flag: &str) -> bool {
        self.switches.iter().any(|s| s == flag)
    }
}

/// Unwraps a parse result, or prints help / version / the error with the
/// usage and exits (0 for help and version, 2 for a mistake).
pub fn or_exit<T>(program: &str, usage: &str, r: Result<T, ParseExit>) -> T {
    match r {
        Ok(v) => v,
        Err(ParseExit::Help) => {
            let _ = writeln!(std::io::stdout(), "{usage}");
            std::process::exit(0)
        }
        Err(ParseExit::Version) => {
            let _ = writeln!(std::io::stdout(), "{program} {}", env!("CARGO_PKG_VERSION"));
            std::process::exit(0)
        }
        Err(ParseExit::Usage(msg)) => {
            let _ = writeln!(std::io::stderr(), "{program}: error: {msg}\n\n{usage}");
            std::process::exit(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn values_inline_values_and_switches() {
        let f = parse(argv("--a 1 --b=x --s --a 2"), &["--a", "--b"], &["--s"]).unwrap();
        assert_eq!(f.get::<u32>("--a").unwrap(), Some(2));
        assert_eq!(f.raw("--b"), Some("x"));
        assert!(f.switch("--s"));
        assert_eq!(f.get_or::<u32>("--c", 7).unwrap(), 7);
    }

    #[test]
    fn mistakes_are_usage_errors_naming_the_argument() {
        let e = |s, v: &[&str], sw: &[&str]| parse(argv(s), v, sw).unwrap_err();
        assert_eq!(
            e("--x 1", &["--a"], &[]),
            ParseExit::Usage("unexpected argument '--x'".into())
        );
        assert_eq!(
            e("--a", &["--a"], &[]),
            ParseExit::Usage("--a needs a value".into())
        );
        assert_eq!(
            e("--s=1", &[], &["--s"]),
            ParseExit::Usage("--s takes no value".into())
        );
        assert_eq!(e("--a 1 -h", &["--a"], &[]), ParseExit::Help);
        let f = parse(argv("--a x"), &["--a"], &[]).unwrap();
        assert!(
            matches!(f.get::<u32>("--a"), Err(ParseExit::Usage(m)) if m.contains("'x' for --a"))
        );
        assert!(
            matches!(f.required::<u32>("--n", "N"), Err(ParseExit::Usage(m)) if m == "--n N is required")
        );
    }

    #[test]
    fn a_subcommand_is_one_of_the_known_ones() {
        let (c, rest) = subcommand(argv("work --pg u"), &["work", "status"]).unwrap();
        assert_eq!((c.as_str(), rest), ("work", argv("--pg u")));
        assert!(matches!(
            subcommand(argv("wrok"), &["work"]),
            Err(ParseExit::Usage(m)) if m.contains("'wrok'")
        ));
        assert!(matches!(
            subcommand(argv(""), &["work"]),
            Err(ParseExit::Usage(_))
        ));
        assert_eq!(subcommand(argv("--help"), &["work"]), Err(ParseExit::Help));
    }
}
