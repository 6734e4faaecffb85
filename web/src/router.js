// Hash history: the master serves one index.html at /ui/, and every screen lives after the #.
import { createRouter, createWebHashHistory } from 'vue-router'
import Overview from './views/Overview.vue'
import Nodes from './views/Nodes.vue'
import Configs from './views/Configs.vue'
import Deployments from './views/Deployments.vue'
import Alerts from './views/Alerts.vue'

export const router = createRouter({
  history: createWebHashHistory(),
  routes: [
    { path: '/', name: 'overview', component: Overview },
    { path: '/nodes', name: 'nodes', component: Nodes },
    { path: '/configs/:id?', name: 'configs', component: Configs, props: true },
    { path: '/deployments/:id?', name: 'deployments', component: Deployments, props: true },
    { path: '/alerts', name: 'alerts', component: Alerts },
    { path: '/:rest(.*)*', redirect: '/' },
  ],
})
