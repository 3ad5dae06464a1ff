// ai-server dashboard: the server renders every section; this only swaps in what it pushes
// (Server-Sent Events from /events) and filters the requests table by client. No polling,
// no templating here: the HTML comes escaped from the server.
"use strict";

(function () {
  const KEEP = 200;
  const live = document.getElementById("live");
  const rows = document.getElementById("rows");
  const select = document.getElementById("client");

  function chosen() {
    return select ? select.value : "";
  }

  function filterRow(row) {
    const who = chosen();
    row.hidden = who !== "" && row.dataset.who !== who;
  }

  function addRows(html, reset) {
    const holder = document.createElement("tbody");
    holder.innerHTML = html;
    if (reset) {
      rows.replaceChildren();
    }
    // Rows arrive oldest first; the table shows the newest on top. A row already shown (a
    // request in progress) is replaced where it is.
    for (const row of Array.from(holder.children)) {
      const old = row.id ? document.getElementById(row.id) : null;
      filterRow(row);
      if (old) {
        old.replaceWith(row);
      } else {
        rows.prepend(row);
      }
    }
    while (rows.children.length > KEEP) {
      rows.lastElementChild.remove();
    }
  }

  function addOption(who) {
    if (!select || who === "" || Array.from(select.options).some((o) => o.value === who)) {
      return;
    }
    const option = document.createElement("option");
    option.value = who;
    option.textContent = who;
    select.append(option);
  }

  function setLive(on) {
    live.classList.toggle("off", !on);
    live.textContent = on ? "live" : "reconnecting…";
  }

  if (select) {
    select.addEventListener("change", () => {
      for (const row of rows.children) {
        filterRow(row);
      }
      const url = new URL(window.location.href);
      if (chosen()) {
        url.searchParams.set("client", chosen());
      } else {
        url.searchParams.delete("client");
      }
      window.history.replaceState(null, "", url);
    });
  }

  const events = new EventSource("/events");
  events.addEventListener("open", () => setLive(true));
  events.addEventListener("error", () => setLive(false));
  events.addEventListener("section", (event) => {
    const data = JSON.parse(event.data);
    const target = document.getElementById(data.id);
    if (target) {
      target.innerHTML = data.html;
    }
  });
  events.addEventListener("rows", (event) => {
    const data = JSON.parse(event.data);
    addRows(data.html, data.reset === true);
    for (const row of rows.children) {
      addOption(row.dataset.who || "");
    }
  });
})();
