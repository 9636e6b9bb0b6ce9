//! Collecting every error of one expansion, and the output when there are some.
//!
//! A `syn::Error` can hold several messages, each with its own span, and turns into
//! one `compile_error!` per message: [`Errors`] combines them as the checks find
//! them, and [`rejected`] puts them after the unchanged item. The user sees every
//! problem of the attribute in one build, each underlined where it is.
//!
//! [`code`] quotes a piece of the user's code in a message the way it was written.

use std::fmt::Display;

use proc_macro2::{Delimiter, TokenStream, TokenTree};
use quote::ToTokens;

/// The errors found so far; reported together, so one build shows every problem.
#[derive(Debug, Default)]
pub(crate) struct Errors {
    /// Every error pushed, in order, as one `syn::Error`; `None` while there is
    /// none (`syn::Error` has no empty value).
    combined: Option<syn::Error>,
}

impl Errors {
    /// Adds an error (possibly itself several, from `syn::Error::combine`).
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.combined {
            Some(combined) => combined.combine(error),
            None => self.combined = Some(error),
        }
    }

    /// Adds an error pointing at `tokens` (all of them, first to last).
    pub(crate) fn spanned(&mut self, tokens: impl ToTokens, message: impl Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    /// `Err` with every error pushed, if any.
    pub(crate) fn finish(self) -> syn::Result<()> {
        match self.combined {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// The output of a rejected attribute: the item exactly as written, so that the IDE
/// still knows the function, followed by one `compile_error!` per error.
///
/// Nothing else is generated: no registry entry, no `init()` call.
pub(crate) fn rejected(item: TokenStream, error: &syn::Error) -> TokenStream {
    let mut output = item;
    output.extend(error.to_compile_error());
    output
}

/// Code as a person would write it, for quoting in a message: `Vec<u8>` and
/// `&'a str` rather than the `Vec < u8 >` and `& 'a str` of `TokenStream`'s `Display`.
pub(crate) fn code(tokens: impl ToTokens) -> String {
    let mut text = String::new();
    write_code(&mut text, tokens.into_token_stream());
    text
}

/// Appends `tokens` to `text`, spaced as in hand-written code:
///
/// - words (identifiers, literals) are separated by a space: `dyn Trait`;
/// - `,` and `;` are followed by one: `(u8, u8)`, `[u8; 4]`;
/// - `=` gets a space on each side (`Item = u8`), unless it directly follows `=`,
///   `!`, `<`, `>` or `-`, so that `!=`, `<=`, `>=` and `-=` stay whole;
/// - `-` then `>` become ` -> `;
/// - other punctuation is tight: `Vec<u8>`, `&'a`, `::std`;
/// - a `(..)` group is tight after a word (`Fn(u8)`, `Point(x)`) but not after a
///   lifetime or `mut`, `dyn`, `impl`, `const`; `{ .. }` and `[..]` groups are
///   spaced after a word, and `{ .. }` has a space inside each brace.
///
/// Trailing spaces are trimmed inside each group and at the end.
fn write_code(text: &mut String, tokens: TokenStream) {
    for token in tokens {
        match token {
            TokenTree::Ident(ident) => {
                space_between_words(text);
                text.push_str(&ident.to_string());
            }
            TokenTree::Literal(literal) => {
                space_between_words(text);
                text.push_str(&literal.to_string());
            }
            TokenTree::Punct(punct) => match punct.as_char() {
                ',' | ';' => {
                    text.push(punct.as_char());
                    text.push(' ');
                }
                '=' if !text.ends_with(['=', '!', '<', '>', '-']) => text.push_str(" = "),
                '>' if text.ends_with('-') => {
                    text.pop();
                    text.push_str(" -> ");
                }
                other => text.push(other),
            },
            TokenTree::Group(group) => {
                let (open, close) = match group.delimiter() {
                    Delimiter::Parenthesis => ("(", ")"),
                    Delimiter::Brace => ("{ ", " }"),
                    Delimiter::Bracket => ("[", "]"),
                    Delimiter::None => ("", ""),
                };
                // `Fn(u8)` and `Point(x)` are tight, `mut (a, b)` and `'a [u8]` are not.
                let last_word = text
                    .rsplit(|c: char| !(c.is_alphanumeric() || c == '_' || c == '\''))
                    .next()
                    .unwrap_or("");
                let spaced = group.delimiter() != Delimiter::Parenthesis
                    || last_word.starts_with('\'')
                    || ["mut", "dyn", "impl", "const"].contains(&last_word);
                if spaced {
                    space_between_words(text);
                }
                text.push_str(open);
                write_code(text, group.stream());
                let trimmed = text.trim_end().len();
                text.truncate(trimmed);
                text.push_str(close);
            }
        }
    }
    let trimmed = text.trim_end().len();
    text.truncate(trimmed);
}

/// Two words in a row need a space: `dyn Trait`, `&'a str`, `mut x`.
fn space_between_words(text: &mut String) {
    if text.ends_with(|c: char| c.is_alphanumeric() || c == '_') {
        text.push(' ');
    }
}

/// Test helper shared by the attribute modules.
#[cfg(test)]
pub(crate) mod testing {
    use syn::Signature;

    use super::Errors;
    use crate::item;

    /// Each error of `#[name(args)] item`, validated by `check`, with the source
    /// text it points at (`None` for the attribute itself).
    pub(crate) fn errors(
        name: &str,
        not_a_fn: &str,
        check: fn(&Signature, &mut Errors),
        args: &str,
        item: &str,
    ) -> Vec<(String, Option<String>)> {
        let parsed = item::parse_checked(
            name,
            not_a_fn,
            check,
            args.parse().unwrap(),
            item.parse().unwrap(),
        );
        match parsed {
            Ok(_) => Vec::new(),
            Err(error) => error
                .into_iter()
                .map(|e| (e.to_string(), e.span().source_text()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use proc_macro2::Span;
    use quote::quote;

    use super::*;

    #[test]
    fn code_reads_like_source() {
        assert_eq!(code(quote!(Vec<u8>)), "Vec<u8>");
        assert_eq!(code(quote!(&'a str)), "&'a str");
        assert_eq!(code(quote!(&mut [u8; 4])), "&mut [u8; 4]");
        assert_eq!(code(quote!(&'static [u8])), "&'static [u8]");
        assert_eq!(code(quote!(&mut (u8, u8))), "&mut (u8, u8)");
        assert_eq!(code(quote!(Point { x, .. })), "Point { x, .. }");
        assert_eq!(code(quote!(Point(x))), "Point(x)");
        assert_eq!(code(quote!((u64, String,))), "(u64, String,)");
        assert_eq!(
            code(quote!(::std::collections::HashMap<K, Vec<V>>)),
            "::std::collections::HashMap<K, Vec<V>>"
        );
        assert_eq!(code(quote!(&dyn Fn(u8) -> u8)), "&dyn Fn(u8) -> u8");
        assert_eq!(
            code(quote!(Box<dyn Iterator<Item = u8>>)),
            "Box<dyn Iterator<Item = u8>>"
        );
    }

    #[test]
    fn empty_is_ok() {
        assert!(Errors::default().finish().is_ok());
    }

    #[test]
    fn keeps_every_error_in_order() {
        let mut errors = Errors::default();
        errors.push(syn::Error::new(Span::call_site(), "first"));
        errors.spanned(quote!(a b), "second");
        errors.push(syn::Error::new(Span::call_site(), "third"));
        let messages: Vec<String> = errors
            .finish()
            .unwrap_err()
            .into_iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(messages, ["first", "second", "third"]);
    }

    #[test]
    fn rejected_keeps_the_item_and_appends_errors() {
        let item = quote!(
            fn f() {}
        );
        let error = syn::Error::new(Span::call_site(), "bad");
        let output = rejected(item, &error).to_string();
        assert!(output.starts_with("fn f () { }"), "{output}");
        assert!(output.contains("compile_error ! { \"bad\" }"), "{output}");
    }
}
