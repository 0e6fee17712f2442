// Reload a page that is still changing (a job in progress) every few seconds,
// unless the operator is in the middle of a form or has a detail open.
(function () {
  "use strict";
  var holder = document.querySelector("[data-refresh]");
  if (!holder) { return; }
  var seconds = parseInt(holder.getAttribute("data-refresh"), 10) || 5;
  window.setInterval(function () {
    var busy = document.activeElement && /^(INPUT|SELECT|TEXTAREA)$/.test(document.activeElement.tagName);
    var opened = document.querySelector("details[open]");
    var ticked = document.querySelector("input[type=checkbox]:checked");
    if (!busy && !opened && !ticked && document.visibilityState === "visible") {
      window.location.reload();
    }
  }, seconds * 1000);
})();
