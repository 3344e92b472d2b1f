//! The 404 page: the site's look, a way home, none of the landing page's
//! figures (a mistyped link must not look like the home page).

use leptos::prelude::*;
use leptos_meta::Title;

use super::layout::{Footer, Masthead};

/// The page for every path that is no page, API route or file.
#[component]
pub fn NotFound() -> impl IntoView {
    // The fallback handler answers 404 already; a path that a page route
    // matched but that names no page (`/builds/abc`) needs it said here.
    #[cfg(feature = "ssr")]
    if let Some(response) = use_context::<leptos_axum::ResponseOptions>() {
        response.set_status(axum::http::StatusCode::NOT_FOUND);
    }
    view! {
        <Title text="Page not found · Free Agent"/>
        <a class="skip" href="#content">"Skip to the content"</a>
        <Masthead/>
        <main id="content" class="page lost">
            <p class="eyebrow">"Error 404"</p>
            <h1>"There is no page here"</h1>
            <p class="lede">
                "The link may be mistyped, or the page may have moved. A build's own page lives at "
                <code>"/builds/<number>"</code>
                ", opened with the link its submitter received."
            </p>
            <p class="actions">
                <a class="button" href="/">"Go to the home page"</a>
                <a href="/#network">"See the network right now"</a>
            </p>
        </main>
        <Footer/>
    }
}
