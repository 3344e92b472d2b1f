//! The static prose of the landing page.

use leptos::prelude::*;

/// What Free Agent is.
#[component]
pub fn About() -> impl IntoView {
    view! {
        <section id="about" class="page prose" aria-labelledby="about-title">
            <h2 id="about-title">"What Free Agent is"</h2>
            <div class="cards">
                <article class="card">
                    <h3>"Volunteers lend machines"</h3>
                    <p>
                        "Anyone can run the Free Agent worker on a computer that would otherwise sit idle. It asks the network for work, builds, and reports back."
                    </p>
                </article>
                <article class="card">
                    <h3>"Your command, your machine"</h3>
                    <p>
                        "The network never sends code to run. Each worker runs the build command its owner configured, in a fresh directory, as its own process group."
                    </p>
                </article>
                <article class="card">
                    <h3>"Honest books"</h3>
                    <p>
                        "Every figure on this page is exact: CPU time comes from the kernel's own accounting of each build's processes, counted once however often it is sent."
                    </p>
                </article>
            </div>
        </section>
    }
}

/// How to lend a machine: the agent commands from SPEC.
///
/// Code blocks scroll sideways on phones, so each is focusable and named
/// (`tabindex="0"`): a keyboard user must be able to scroll it too.
#[component]
pub fn Lend() -> impl IntoView {
    view! {
        <section id="lend" class="page prose" aria-labelledby="lend-title">
            <h2 id="lend-title">"Lend a machine"</h2>
            <ol class="steps">
                <li>
                    <h3>"Register it once"</h3>
                    <p>
                        "Ask the network's operator for the admin key, then register. The worker declares this machine's cores and memory and saves its token (readable only by you) in "
                        <code>"~/.config/freeagent/worker.token"</code>
                        "."
                    </p>
                    <pre tabindex="0" role="group" aria-label="Command: register this machine"><code>"freeagent agent register \\\n  --controller https://builds.example.org \\\n  --admin-key \"$FREEAGENT_ADMIN_KEY\" \\\n  --name my-laptop --platform linux"</code></pre>
                </li>
                <li>
                    <h3>"Start the worker"</h3>
                    <p>
                        "Give it the command that builds an app on this machine. It runs with "
                        <code>"FREEAGENT_BUILD_ID"</code>
                        ", "
                        <code>"FREEAGENT_PLATFORM"</code>
                        " and "
                        <code>"FREEAGENT_WORK_DIR"</code>
                        " set; exit status 0 means success."
                    </p>
                    <pre tabindex="0" role="group" aria-label="Command: start the worker"><code>"freeagent agent \\\n  --controller https://builds.example.org \\\n  --platform linux \\\n  --build-command './build.sh'"</code></pre>
                </li>
                <li>
                    <h3>"Stop whenever you like"</h3>
                    <p>
                        "Press Ctrl-C. The worker stops claiming builds, ends the running one, delivers its last measurements and exits. Add "
                        <code>"--no-telemetry"</code>
                        " to send no CPU or memory samples at all."
                    </p>
                </li>
            </ol>
        </section>
    }
}

/// How to submit a build through the REST API.
#[component]
pub fn Submit() -> impl IntoView {
    view! {
        <section id="submit" class="page prose" aria-labelledby="submit-title">
            <h2 id="submit-title">"Submit a build"</h2>
            <p>
                "Builds are queued per platform and go to the first worker that declared it. Submitting needs the admin key; the answer carries a token that lets you follow and cancel that one build."
            </p>
            <pre tabindex="0" role="group" aria-label="Command: submit a build"><code>"curl -X POST https://builds.example.org/api/builds \\\n  -H \"Authorization: Bearer $FREEAGENT_ADMIN_KEY\" \\\n  -H 'Content-Type: application/json' \\\n  -d '{\"platform\": \"linux\", \"label\": \"my-app 1.4.2\"}'"</code></pre>
            <p>
                "The answer's "
                <code>"pageUrl"</code>
                " is the build's own page, "
                <code>"/builds/<id>#token=<accessToken>"</code>
                ": open it on this site to watch the build's CPU and memory live (the secret after "
                <code>"#"</code>
                " never leaves the browser). Or follow it with the "
                <code>"accessToken"</code>
                ":"
            </p>
            <pre tabindex="0" role="group" aria-label="Command: follow a build"><code>"curl https://builds.example.org/api/builds/$BUILD_ID \\\n  -H \"Authorization: Bearer $ACCESS_TOKEN\""</code></pre>
        </section>
    }
}
