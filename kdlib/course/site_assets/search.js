// kdlib course site: search every page's text in the browser (window.KDLIB_SEARCH comes
// from search-index.js, written by `kdlib course site`); no request leaves the page.
(function () {
  function words(s) { return s.toLowerCase().split(/[^\p{L}\p{N}_]+/u).filter(Boolean); }
  function search(query) {
    var q = words(query), hits = [];
    if (!q.length) return hits;
    (window.KDLIB_SEARCH || []).forEach(function (entry) {
      var text = (entry.title + " " + entry.text).toLowerCase();
      if (q.every(function (w) { return text.indexOf(w) >= 0; })) {
        var at = Math.max(0, entry.text.toLowerCase().indexOf(q[0]));
        var snippet = entry.text.slice(Math.max(0, at - 40), at + 80);
        hits.push({url: entry.url, title: entry.title, snippet: snippet,
                   score: entry.title.toLowerCase().indexOf(q[0]) >= 0 ? 0 : 1});
      }
    });
    hits.sort(function (a, b) { return a.score - b.score; });
    return hits.slice(0, 12);
  }
  window.kdlibSearch = search;
  document.addEventListener("DOMContentLoaded", function () {
    var box = document.getElementById("kdlib-search"), list = document.getElementById("kdlib-search-results");
    if (!box) return;
    box.addEventListener("input", function () {
      list.innerHTML = "";
      search(box.value).forEach(function (hit) {
        var li = document.createElement("li"), a = document.createElement("a"), small = document.createElement("small");
        a.href = hit.url; a.textContent = hit.title; small.textContent = "…" + hit.snippet + "…";
        li.appendChild(a); li.appendChild(small); list.appendChild(li);
      });
    });
  });
})();
