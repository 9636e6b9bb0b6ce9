//! `#[procpool::main]`: call `procpool::init()` first thing in `main`.
//!
//! `fn main() -> R { body }` becomes `fn main() -> R { ::procpool::init(); body }`.
//! Inner attributes (`#![allow(..)]`) stay at the top of the body, where they must be.
//!
//! `init()` must come first because a pool's workers are this same program run
//! again: in a worker, `init()` serves tasks and exits, and nothing of `main` after
//! it runs. Anything before it (printing, opening files, starting a runtime) would
//! run once in every worker too.
//!
//! Only the attributes, visibility and signature are re-emitted from what syn
//! parsed; the body's tokens are passed through as they came, behind the call.

use proc_macro2::{Group, TokenStream};
use quote::quote;
use syn::parse::{ParseStream, Parser};
use syn::{Attribute, Signature};

use crate::attr::Options;
use crate::error::{self, Errors};
use crate::item::{self, FnItem};

/// Expands `#[procpool::main(args)] item`: the function with `init()` as its first
/// statement, or the item unchanged followed by every error.
pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    match try_expand(args, item.clone()) {
        Ok(output) => output,
        Err(error) => error::rejected(item, &error),
    }
}

/// [`expand`] without the fallback: the function with the call, or every error.
fn try_expand(args: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let (options, function) = item::parse_checked(
        "procpool::main",
        "#[procpool::main] goes on `fn main`",
        check,
        args,
        item,
    )?;
    Ok(with_init(&options, function))
}

/// Pushes one error for each thing that keeps `sig` from being a `main` that
/// procpool can start from.
///
/// Rejected, each at its own tokens:
///
/// - `async`: an `async fn main` only builds a future; its body, `init()` included,
///   would run inside the runtime that the runtime's own attribute starts, after
///   that runtime exists. The message says to put this attribute below the
///   runtime's, where it sees the synchronous `main` that one generates;
/// - generic parameters, which `main` cannot have;
/// - parameters (and `...`), all underlined together: `main` takes none.
///
/// The name is not checked, nor are `unsafe`, `const` or an ABI: the function is
/// emitted with them as written.
fn check(sig: &Signature, errors: &mut Errors) {
    if let Some(token) = &sig.asyncness {
        errors.spanned(
            token,
            "#[procpool::main] needs a synchronous `fn main`: with an async runtime, \
             write #[procpool::main] below the runtime's attribute (e.g. #[tokio::main])",
        );
    }
    if !sig.generics.params.is_empty() {
        errors.spanned(&sig.generics, "`main` cannot be generic");
    }
    if !sig.inputs.is_empty() || sig.variadic.is_some() {
        let inputs = &sig.inputs;
        let variadic = &sig.variadic;
        errors.spanned(
            quote!(#inputs #variadic),
            "`main` takes no parameters: read the command line with std::env::args()",
        );
    }
}

/// `function` with `krate::init();` as the first statement of its body.
///
/// The body is split into its inner attributes and the rest; the call goes between
/// them. When the inner attributes do not parse, no split is made and the call
/// goes first. The new body keeps the span of the original braces.
fn with_init(options: &Options, function: FnItem) -> TokenStream {
    let FnItem {
        attrs,
        vis,
        sig,
        body,
    } = function;
    let krate = &options.krate;
    let split = |input: ParseStream<'_>| {
        let inner = input.call(Attribute::parse_inner)?;
        let rest: TokenStream = input.parse()?;
        Ok((inner, rest))
    };
    let stream = match split.parse2(body.stream()) {
        Ok((inner, rest)) => quote!(#(#inner)* #krate::init(); #rest),
        // A broken inner attribute: the compiler will report it where it is.
        Err(_) => {
            let rest = body.stream();
            quote!(#krate::init(); #rest)
        }
    };
    let mut new_body = Group::new(body.delimiter(), stream);
    new_body.set_span(body.span());
    quote!(#(#attrs)* #vis #sig #new_body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The expansion as text without whitespace, so that token spacing does not matter.
    fn expand_str(args: &str, item: &str) -> String {
        squash(&expand(args.parse().unwrap(), item.parse().unwrap()).to_string())
    }

    fn tokens(source: &str) -> String {
        squash(&source.parse::<TokenStream>().unwrap().to_string())
    }

    fn squash(text: &str) -> String {
        text.chars().filter(|c| !c.is_whitespace()).collect()
    }

    /// Each error of `#[procpool::main(args)] item` with the source text it points at.
    fn errors(args: &str, item: &str) -> Vec<(String, Option<String>)> {
        crate::error::testing::errors(
            "procpool::main",
            "#[procpool::main] goes on `fn main`",
            check,
            args,
            item,
        )
    }

    #[test]
    fn calls_init_first() {
        assert_eq!(
            expand_str("", "fn main() { run(); }"),
            tokens("fn main() { ::procpool::init(); run(); }")
        );
    }

    #[test]
    fn keeps_attributes_signature_and_result() {
        assert_eq!(
            expand_str(
                "",
                "/// Entry.\n#[allow(unused)] pub fn main() -> Result<(), Box<dyn Error>> where (): Sized { Ok(()) }"
            ),
            tokens(
                "#[doc = \" Entry.\"] #[allow(unused)] pub fn main() -> Result<(), Box<dyn Error>> where (): Sized \
                 { ::procpool::init(); Ok(()) }"
            )
        );
    }

    #[test]
    fn leaves_inner_attributes_on_top() {
        assert_eq!(
            expand_str("", "fn main() { #![allow(unused)] let x = 1; }"),
            tokens("fn main() { #![allow(unused)] ::procpool::init(); let x = 1; }")
        );
    }

    #[test]
    fn uses_the_crate_path() {
        assert_eq!(
            expand_str("crate = ::my_reexport::procpool", "fn main() {}"),
            tokens("fn main() { ::my_reexport::procpool::init(); }")
        );
    }

    #[test]
    fn does_not_need_a_body_that_parses() {
        assert_eq!(
            expand_str("", "fn main() { let x = ; }"),
            tokens("fn main() { ::procpool::init(); let x = ; }")
        );
    }

    #[test]
    fn rejects_async_generic_and_parameters_at_once() {
        assert_eq!(
            errors(
                "timeout = 3",
                "async fn main<T>(args: Vec<String>, n: u8) {}"
            ),
            [
                (
                    "unknown argument `timeout`: the only argument is `crate = path`, \
                     e.g. #[procpool::main(crate = ::my_crate::procpool)]"
                        .to_owned(),
                    Some("timeout".to_owned())
                ),
                (
                    "#[procpool::main] needs a synchronous `fn main`: with an async runtime, \
                     write #[procpool::main] below the runtime's attribute (e.g. #[tokio::main])"
                        .to_owned(),
                    Some("async".to_owned())
                ),
                (
                    "`main` cannot be generic".to_owned(),
                    Some("<T>".to_owned())
                ),
                (
                    "`main` takes no parameters: read the command line with std::env::args()"
                        .to_owned(),
                    Some("args: Vec<String>, n: u8".to_owned())
                ),
            ]
        );
    }

    #[test]
    fn emits_the_item_unchanged_with_the_errors() {
        let output = expand_str("", "async fn main() { run().await }");
        assert!(
            output.starts_with(&tokens("async fn main() { run().await }")),
            "{output}"
        );
        assert!(output.contains("compile_error!"), "{output}");
        assert!(!output.contains("init"), "{output}");
    }

    #[test]
    fn rejects_other_items() {
        assert_eq!(
            errors("", "mod app {}"),
            [(
                "#[procpool::main] goes on `fn main`, not on a module".to_owned(),
                None
            )]
        );
    }
}
