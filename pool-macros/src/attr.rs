//! The arguments both attributes accept: `crate = path`.
//!
//! The path says where procpool is, for a crate that reaches it through a
//! re-export: every path to procpool in the expansion starts with it
//! (`#path::init()`, `#path::__private::TASKS`, ...). Without it, `::procpool`.
//!
//! Rejected, each with its own error, the others still checked:
//!
//! | written                            | why                                           |
//! |------------------------------------|-----------------------------------------------|
//! | not a list of `name`, `name(..)` or `name = value` | syn's error; no argument is checked further |
//! | `krate = ::x`, `timeout(3)`        | not `crate`: there is no other argument       |
//! | `crate`, `crate(::x)`              | `crate` needs `= path`                        |
//! | `crate = "::x"`, `crate = <T>::x`  | the value must be a plain path, unquoted      |
//! | `crate = ::a, crate = ::b`         | given twice: the first is kept, the second reported |

use proc_macro2::TokenStream;
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Expr, Meta, Path, Token};

use crate::error::{Errors, code};

/// The arguments of `#[pool_task(..)]` or `#[procpool::main(..)]`.
pub(crate) struct Options {
    /// Where procpool is: `::procpool` unless `crate = path` says otherwise.
    pub(crate) krate: Path,
}

impl Options {
    /// Parses the arguments of `#[attribute(..)]`. Each problem is pushed onto
    /// `errors` and skipped, so the rest is still checked.
    ///
    /// `attribute` is the attribute's name as the user writes it (`pool_task`,
    /// `procpool::main`), for the examples in the messages. The result is always
    /// usable: a rejected argument leaves the default (or the first accepted
    /// `crate`) in place, so that the caller can go on checking the function.
    pub(crate) fn parse(attribute: &str, args: TokenStream, errors: &mut Errors) -> Options {
        let mut krate: Option<Path> = None;
        let metas = match Punctuated::<Meta, Token![,]>::parse_terminated.parse2(args) {
            Ok(metas) => metas,
            Err(error) => {
                errors.push(error);
                Punctuated::new()
            }
        };
        for meta in metas {
            if !meta.path().is_ident("crate") {
                let name = code(meta.path());
                errors.spanned(
                    meta.path(),
                    format!(
                        "unknown argument `{name}`: the only argument is `crate = path`, \
                         e.g. #[{attribute}(crate = ::my_crate::procpool)]"
                    ),
                );
                continue;
            }
            let Meta::NameValue(name_value) = &meta else {
                errors.spanned(
                    &meta,
                    format!(
                        "`crate` takes a path to procpool, e.g. \
                         #[{attribute}(crate = ::my_crate::procpool)]"
                    ),
                );
                continue;
            };
            let path = match &name_value.value {
                Expr::Path(path) if path.attrs.is_empty() && path.qself.is_none() => &path.path,
                other => {
                    errors.spanned(
                        other,
                        "expected a path to procpool after `crate =`, e.g. `::my_crate::procpool`",
                    );
                    continue;
                }
            };
            if krate.is_some() {
                errors.spanned(&meta, "`crate` is given twice");
                continue;
            }
            krate = Some(path.clone());
        }
        Options {
            krate: krate.unwrap_or_else(|| syn::parse_quote!(::procpool)),
        }
    }
}

#[cfg(test)]
mod tests {
    use quote::{ToTokens, quote};

    use super::*;

    fn parse(args: TokenStream) -> (String, Vec<String>) {
        let mut errors = Errors::default();
        let options = Options::parse("pool_task", args, &mut errors);
        let messages = match errors.finish() {
            Ok(()) => Vec::new(),
            Err(error) => error.into_iter().map(|e| e.to_string()).collect(),
        };
        (options.krate.to_token_stream().to_string(), messages)
    }

    #[test]
    fn defaults_to_procpool() {
        assert_eq!(parse(quote!()), (":: procpool".to_owned(), vec![]));
    }

    #[test]
    fn takes_a_crate_path() {
        assert_eq!(
            parse(quote!(crate = ::my_reexport::procpool)),
            (":: my_reexport :: procpool".to_owned(), vec![])
        );
        assert_eq!(
            parse(quote!(crate = crate::procpool,)),
            ("crate :: procpool".to_owned(), vec![])
        );
    }

    #[test]
    fn reports_every_bad_argument() {
        let (krate, errors) = parse(quote!(
            krate = ::x,
            crate,
            crate = "::x",
            crate = ::a,
            crate = ::b,
            timeout(3)
        ));
        assert_eq!(krate, ":: a");
        assert_eq!(
            errors,
            [
                "unknown argument `krate`: the only argument is `crate = path`, \
                 e.g. #[pool_task(crate = ::my_crate::procpool)]",
                "`crate` takes a path to procpool, e.g. #[pool_task(crate = ::my_crate::procpool)]",
                "expected a path to procpool after `crate =`, e.g. `::my_crate::procpool`",
                "`crate` is given twice",
                "unknown argument `timeout`: the only argument is `crate = path`, \
                 e.g. #[pool_task(crate = ::my_crate::procpool)]",
            ]
        );
    }

    #[test]
    fn reports_unparsable_arguments() {
        let (krate, errors) = parse(quote!(crate = ));
        assert_eq!(krate, ":: procpool");
        assert_eq!(errors.len(), 1, "{errors:?}");
    }
}
