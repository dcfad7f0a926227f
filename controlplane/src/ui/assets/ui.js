// The console's only script: the copy button next to a key's secret. Everything else is
// plain HTML forms, so the console works with scripts off (copy by selecting the text).
document.addEventListener("click", function (e) {
  var b = e.target.closest("button[data-copy]");
  if (!b) return;
  var t = document.getElementById(b.getAttribute("data-copy"));
  if (!t || !navigator.clipboard) return;
  navigator.clipboard.writeText(t.textContent).then(function () { b.textContent = "Copied"; });
});
