//! The annotated function, parsed leniently.
//!
//! Only the signature is parsed; the body stays a group of tokens (as in
//! tokio-macros). A body that is still being typed does not stop the expansion, and
//! its syntax errors come from the compiler, at their real place.
//!
//! [`parse_checked`] is the front half both attributes share: arguments, item,
//! signature checks, with every error collected before any is returned.

use proc_macro2::{Delimiter, Group, Span, TokenStream};
use syn::parse::{Parse, ParseStream};
use syn::{Attribute, Item, Signature, Visibility};

use crate::attr::Options;
use crate::error::Errors;

/// A function item: `#[attrs] vis fn name(..) -> R { body }`.
pub(crate) struct FnItem {
    /// Outer attributes, doc comments included.
    pub(crate) attrs: Vec<Attribute>,
    /// `pub`, `pub(crate)`, or nothing.
    pub(crate) vis: Visibility,
    /// Qualifiers, name, generics, parameters, result.
    pub(crate) sig: Signature,
    /// The `{ .. }` body, unparsed.
    pub(crate) body: Group,
}

/// Only the name: syn implements `Debug` for its syntax tree only with its
/// `extra-traits` feature, which this crate does not ask for, and the name is what
/// a failing test needs to show.
impl std::fmt::Debug for FnItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnItem")
            .field("name", &self.sig.ident)
            .finish_non_exhaustive()
    }
}

/// Outer attributes, visibility, a whole signature (`const`, `async`, `unsafe`,
/// `extern "ABI"`, name, generics, parameters, result, `where` clause), then one
/// `{ .. }` group, and nothing after it.
///
/// Anything syn's [`Signature`] accepts is taken here; what the attribute does not
/// allow is left to its `check`, so that it gets a precise message instead of a
/// parse error.
impl Parse for FnItem {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let vis = input.parse()?;
        let sig = input.parse()?;
        let body: Group = input.parse()?;
        if body.delimiter() != Delimiter::Brace {
            return Err(syn::Error::new(
                body.span(),
                "expected the body of the function",
            ));
        }
        Ok(FnItem {
            attrs,
            vis,
            sig,
            body,
        })
    }
}

/// Parses an attribute's `args` and the function `item` it is on, and validates the
/// signature with `check`, collecting every error.
///
/// `attribute` names the attribute in messages about its arguments, `misplaced`
/// starts the message for an item that is not a function (see [`parse_fn`]).
/// `check` runs only on an item that parsed; the arguments are checked either way.
///
/// # Errors
///
/// Every problem found, combined into one `syn::Error`, in this order: arguments,
/// then the item (not a function) or its signature.
pub(crate) fn parse_checked(
    attribute: &str,
    misplaced: &str,
    check: fn(&Signature, &mut Errors),
    args: TokenStream,
    item: TokenStream,
) -> syn::Result<(Options, FnItem)> {
    let mut errors = Errors::default();
    let options = Options::parse(attribute, args, &mut errors);
    let function = parse_fn(item, misplaced);
    match &function {
        Ok(function) => check(&function.sig, &mut errors),
        Err(error) => errors.push(error.clone()),
    }
    errors.finish()?;
    function.map(|function| (options, function))
}

/// Parses `item` as a function with a body.
///
/// When it is some other item, the error points at the attribute and says
/// `misplaced` (e.g. ``"#[pool_task] goes on a free `fn`"``) followed by what it was
/// put on. When it is no item at all, the error is syn's.
///
/// # Errors
///
/// The one error above. `item` is parsed a second time, as any [`Item`], only
/// after it failed to parse as a function.
pub(crate) fn parse_fn(item: TokenStream, misplaced: &str) -> syn::Result<FnItem> {
    syn::parse2::<FnItem>(item.clone()).map_err(|error| match syn::parse2::<Item>(item) {
        Ok(other) => syn::Error::new(Span::call_site(), format!("{misplaced}{}", put_on(&other))),
        Err(_) => error,
    })
}

/// How to finish "goes on a free `fn`" for an item that is not one.
///
/// The text follows the `misplaced` start directly, so it begins with a comma or a
/// space: ``"#[pool_task] goes on a free `fn`, not on a struct"``.
fn put_on(item: &Item) -> &'static str {
    match item {
        Item::Const(_) => ", not on a constant",
        Item::Enum(_) => ", not on an enum",
        Item::ExternCrate(_) => ", not on an `extern crate`",
        Item::ForeignMod(_) => ", not on an `extern` block",
        Item::Impl(_) => ", not on an impl block",
        Item::Macro(_) => ", not on a macro",
        Item::Mod(_) => ", not on a module",
        Item::Static(_) => ", not on a static",
        Item::Struct(_) => ", not on a struct",
        Item::Trait(_) => ", not on a trait",
        Item::TraitAlias(_) => ", not on a trait alias",
        Item::Type(_) => ", not on a type alias",
        Item::Union(_) => ", not on a union",
        Item::Use(_) => ", not on a `use`",
        // A function without a body (`fn f();`) parses as verbatim.
        _ => " with a body",
    }
}

#[cfg(test)]
mod tests {
    use quote::{ToTokens, quote};

    use super::*;

    const MISPLACED: &str = "#[pool_task] goes on a free `fn`";

    #[test]
    fn parses_a_function_and_keeps_the_body_as_tokens() {
        let item = parse_fn(
            quote!(
                /// Docs.
                #[inline]
                pub(crate) const fn f(x: u64) -> u64 { let y = ; x }
            ),
            MISPLACED,
        )
        .unwrap();
        assert_eq!(item.attrs.len(), 2);
        assert_eq!(item.vis.to_token_stream().to_string(), "pub (crate)");
        assert_eq!(item.sig.ident, "f");
        assert_eq!(item.body.stream().to_string(), "let y = ; x");
    }

    #[test]
    fn names_the_item_it_was_put_on() {
        let message = |item: TokenStream| parse_fn(item, MISPLACED).unwrap_err().to_string();
        assert_eq!(
            message(quote!(
                struct S;
            )),
            "#[pool_task] goes on a free `fn`, not on a struct"
        );
        assert_eq!(
            message(quote!(impl S { fn f() {} })),
            "#[pool_task] goes on a free `fn`, not on an impl block"
        );
        assert_eq!(
            message(quote!(
                static N: u8 = 1;
            )),
            "#[pool_task] goes on a free `fn`, not on a static"
        );
        assert_eq!(
            message(quote!(
                fn f(x: u8);
            )),
            "#[pool_task] goes on a free `fn` with a body"
        );
    }

    #[test]
    fn keeps_syn_errors_for_broken_signatures() {
        let error = parse_fn(quote!(fn f(x: ) {}), MISPLACED).unwrap_err();
        assert!(!error.to_string().contains("goes on"), "{error}");
    }
}
