//! What every page shares: the masthead and the footer, so that the build
//! page and the 404 page look like the landing page.

use leptos::prelude::*;

/// The site's masthead. On the landing page the section links stay on the
/// page; elsewhere they lead to it.
#[component]
pub fn Masthead(#[prop(optional)] home: bool) -> impl IntoView {
    let to = move |section: &str| {
        if home {
            format!("#{section}")
        } else {
            format!("/#{section}")
        }
    };
    view! {
        <header class="masthead">
            <div class="page masthead-row">
                <a class="brand" href="/">
                    <svg class="brand-mark" viewBox="0 0 32 32" aria-hidden="true">
                        <rect width="32" height="32" rx="8"/>
                        <path d="M10 22V10h12M10 16h8"/>
                    </svg>
                    "Free Agent"
                </a>
                <nav aria-label="Sections">
                    <a href=to("network")>"Network"</a>
                    <a href=to("about")>"About"</a>
                    <a class="cta" href=to("lend")>"Lend a machine"</a>
                    <a href=to("submit")>"Submit a build"</a>
                </nav>
            </div>
        </header>
    }
}

/// The site's footer: where the public figures are.
#[component]
pub fn Footer() -> impl IntoView {
    view! {
        <footer class="footer">
            <div class="page">
                <p>
                    "Free Agent. Figures are public: "
                    <a href="/api/stats"><code>"/api/stats"</code></a>
                    " and "
                    <a href="/api/stats/daily?days=30"><code>"/api/stats/daily"</code></a>
                    "."
                </p>
            </div>
        </footer>
    }
}
